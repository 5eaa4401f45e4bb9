"""bag_size = 1 must be exactly ordinary next-token training (the canary of docs/design.md)."""
import copy

import torch
import torch.nn.functional as F

from conftest import small_recipe
from tstcli.objective import phase_loss
from tstcli.train.optim import make_optimizer
from tstcli.train.session import local_trainer
from tstcli.phases import PhaseSpec
from tstcli.tst import loss_specs


def _trainer(small_data, tmp_path, **kw):
    r = small_recipe(small_data, **{"tst.bag_size": 1, **kw})
    return r, local_trainer(r, tmp_path)


def test_phase1_with_s1_trains_bitwise_like_next_token(small_data, tmp_path):
    r, t = _trainer(small_data, tmp_path)
    assert t.loaders[1].width == r.train.seq_len + 1  # s = 1: phase-1 rows are next-token rows
    models = [t.model, copy.deepcopy(t.model)]
    opts = [make_optimizer(m, r.train) for m in models]
    specs = [PhaseSpec("full", 1, r.train.seq_len), PhaseSpec.next_token(r.train.seq_len)]
    by_phase = loss_specs(r.plan, r.tst, r.train.loss_chunk_size)
    losses = [by_phase[1], by_phase[2]]  # the chunked head loss, as training runs it
    assert losses[0].chunk_size > 0
    for step in range(6):
        rows = torch.from_numpy(t.loaders[1].batch(step)[0])
        for m, o, spec, loss_spec in zip(models, opts, specs, losses):
            loss = phase_loss(m, rows, spec, loss_spec, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            o.step()
            o.zero_grad()
        a, b = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]
        assert torch.equal(a, b), f"phase 1 with s=1 drifted from next-token training at step {step}"


def test_next_token_phase_matches_plain_reference(small_data, tmp_path):
    """Phase 2 as the loop computes it equals textbook next-token CE: model(ids) -> logits -> F.cross_entropy."""
    r, t = _trainer(small_data, tmp_path)
    rows = torch.from_numpy(t.loaders[2].batch(0)[0])
    ours = phase_loss(t.model, rows, PhaseSpec.next_token(r.train.seq_len),
                      loss_specs(r.plan, r.tst, r.train.loss_chunk_size)[2], None)
    logits = t.model.logits(t.model(input_ids=rows[:, :-1]))
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
    assert abs(ours.item() - ref.item()) < 1e-6
