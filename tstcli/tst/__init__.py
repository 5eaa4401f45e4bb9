"""Token Superposition Training: the only TST-specific math (bags, superposed embeddings, multi-hot CE)."""
from tstcli.tst.bags import PhaseSpec, make_bags, phase_specs
from tstcli.tst.loss import multi_hot_ce, target_weights
from tstcli.tst.superpose import superposed_embeddings

__all__ = ["PhaseSpec", "make_bags", "phase_specs", "multi_hot_ce", "target_weights", "superposed_embeddings"]
