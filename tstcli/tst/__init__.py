"""Token Superposition Training: the only TST-specific math (bags, superposed embeddings, the head's losses)."""
from tstcli.tst.bags import make_bags
from tstcli.tst.documents import Arranged, arrange, token_documents
from tstcli.tst.head_loss import LossSpec, head_loss, loss_specs
from tstcli.tst.loss import multi_hot_ce, target_weights
from tstcli.tst.superpose import superposed_embeddings

__all__ = ["make_bags", "Arranged", "arrange", "token_documents", "LossSpec", "head_loss", "loss_specs", "multi_hot_ce",
           "target_weights", "superposed_embeddings"]
