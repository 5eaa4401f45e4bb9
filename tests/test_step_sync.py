"""The step never waits on the host: its scalars stay on the device until the rows are gathered every
train.log_every steps, a non-finite step is skipped on the device, and none of it changes a number."""
import json
import shutil
import signal

import pytest
import torch

from conftest import small_recipe
from test_training import PoisonGradients, _trainer
from tstcli.errors import DivergedError, Stopped
from tstcli.train.hooks import Hook
from tstcli.train.optim import apply_update, make_optimizer

TIMING = {"elapsed_s", "step_time_s", "tokens_per_s", "positions_per_s", "mfu", "data_share", "blocking_s", "total_s"}


class Signal(Hook):
    """Sends this process a real SIGTERM during step `at` (the signal hook's handler takes it)."""

    def __init__(self, at):
        self.at = at

    def before_step(self, t, step):
        if step == self.at:
            signal.raise_signal(signal.SIGTERM)


class Snapshots(Hook):
    """Weights and optimizer moments after the given steps."""

    def __init__(self, steps):
        self.steps, self.seen = set(steps), {}

    def after_step(self, t, step):
        if step in self.steps:
            moments = [v.clone() for s in t.optimizer.state.values() for v in s.values()]
            self.seen[step] = [p.detach().clone() for p in t.model.parameters()] + moments


class Arrivals(Hook):
    """For each train/skip row, the step the loop had reached when the row arrived."""

    def __init__(self):
        self.at = {}

    def on_row(self, t, row):
        if row["kind"] in ("train", "skip"):
            self.at[row["step"]] = t.state.step


def _run(small_data, tmp_path, log_every, dtype, stop_at=None):
    snaps, arrivals = Snapshots({2, 3}), Arrivals()
    hooks = [PoisonGradients({3}), snaps, arrivals] + ([Signal(stop_at)] if stop_at else [])
    t = _trainer(small_data, tmp_path, extra_hooks=hooks, **{"train.log_every": log_every, "train.dtype": dtype,
                                                            "train.skip_nonfinite_steps": 1,
                                                            "checkpoint.every": 100})
    if stop_at:
        with pytest.raises(Stopped):
            t.run()
    else:
        t.run()
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return rows, [p.detach().clone() for p in t.model.parameters()], snaps.seen, arrivals.at


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_rows_gathered_every_log_every_steps_equal_rows_read_at_once(small_data, tmp_path, dtype):
    # log_every = 1 reads every step's scalars at once, as the loop always did; 5 gathers them five steps later.
    at_once, w_once, snaps, arrived_once = _run(small_data, tmp_path / "1", 1, dtype)
    gathered, w_gathered, _, arrived = _run(small_data, tmp_path / "5", 5, dtype)
    assert gathered == at_once  # every row bitwise: losses, gradient norms, counters, val rows, their order
    assert all(torch.equal(a, b) for a, b in zip(w_once, w_gathered))
    kinds = [(r["kind"], r["step"]) for r in at_once if r["kind"] in ("train", "skip")]
    assert kinds[:4] == [("train", 1), ("train", 2), ("skip", 3), ("train", 4)] and len(kinds) == 12
    assert all(torch.equal(a, b) for a, b in zip(snaps[2], snaps[3])), "the skipped step changed the state"
    assert arrived_once == {s: s for s in range(1, 13)}
    # Gathered at step 4 (the held-out evaluation's row must follow them), 5, 6 (the switch's message), 8
    # (evaluation), 10 and 12.
    assert arrived == {1: 4, 2: 4, 3: 4, 4: 4, 5: 5, 6: 6, 7: 8, 8: 8, 9: 10, 10: 10, 11: 12, 12: 12}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_signal_stops_at_the_same_step_with_the_same_rows(small_data, tmp_path, dtype):
    at_once, w_once, _, _ = _run(small_data, tmp_path / "1", 1, dtype, stop_at=7)
    gathered, w_gathered, _, _ = _run(small_data, tmp_path / "5", 5, dtype, stop_at=7)
    assert gathered == at_once and all(torch.equal(a, b) for a, b in zip(w_once, w_gathered))
    assert max(r["step"] for r in gathered if r["kind"] == "train") == 7
    assert (tmp_path / "5" / "checkpoints" / "step-00000007" / "state.json").is_file()


def test_divergence_past_the_bound_is_reported_at_the_gather_with_the_rows_before_it(small_data, tmp_path):
    t = _trainer(small_data, tmp_path, extra_hooks=[PoisonGradients({3, 6})],
                 **{"train.log_every": 5, "train.skip_nonfinite_steps": 1, "checkpoint.every": 100})
    with pytest.raises(DivergedError, match="step 6 \\(phase 1\\)"):
        t.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows if r["kind"] in ("train", "skip")] == [
        ("train", 1), ("train", 2), ("skip", 3), ("train", 4), ("train", 5)]


def _no_host_reads(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("the step read a value from the device")
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_the_step_reads_nothing_from_the_device_with_the_fused_optimizer(small_data, tmp_path, monkeypatch):
    """The GPU path (fused AdamW, the skip decided on the device), run on the CPU: a train step, the
    clean one and the poisoned one, never turns a tensor into a host value."""
    t = _trainer(small_data, tmp_path, extra_hooks=[PoisonGradients({2})], **{"train.log_every": 5})
    t.optimizer = make_optimizer(t.model, t.r.train, fused=True)
    before = None
    with monkeypatch.context() as m:
        _no_host_reads(m)
        outs = [t.train_step(1)]
        before = [p.detach().clone() for p in t.model.parameters()]
        outs.append(t.train_step(2))
    assert [bool(o.ok) for o in outs] == [True, False]
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_fused_adamw_skips_a_step_on_the_device_and_otherwise_steps_as_usual():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    model = torch.nn.ParameterList(params)
    twin = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in params])
    r = small_recipe("unused")
    opt, ref = make_optimizer(model, r.train, fused=True), make_optimizer(twin, r.train, fused=True)
    assert opt.parts[0].defaults["fused"]

    def grads(m, value=None):
        for p in m:
            p.grad = torch.full_like(p, value) if value is not None else torch.ones_like(p) * 0.1

    for ok in (True, False, True):
        grads(model, None if ok else float("nan"))
        state = [v.clone() for s in opt.state.values() for v in s.values()]
        weights = [p.detach().clone() for p in model]
        apply_update(opt, torch.tensor(ok))
        if ok:  # the same as the optimizer on its own
            grads(twin)
            ref.step()
            ref.zero_grad()
            assert all(torch.equal(a, b) for a, b in zip(model, twin))
        else:  # nothing at all: weights, moments and the step counter
            assert all(torch.equal(a, b) for a, b in zip(weights, model))
            assert all(torch.equal(a, b) for a, b in zip(state, (v for s in opt.state.values() for v in s.values())))
    assert all(int(s["step"]) == 2 for s in opt.state.values())


def test_a_gpu_batch_is_copied_from_pinned_memory_without_waiting(monkeypatch):
    """From pageable memory CUDA may wait for the stream before a host-to-device copy; the batch goes through
    pinned memory and a non-blocking copy. (The CPU build cannot pin, so the two calls are recorded.)"""
    import numpy as np

    from tstcli.train.batch import to_device
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: calls.append("pin") or t.clone())
    monkeypatch.setattr(torch.Tensor, "to", lambda t, device, non_blocking=False:
                        calls.append(("to", str(device), non_blocking)) or t)
    rows = np.arange(6, dtype=np.int64).reshape(2, 3)
    out = to_device(rows, torch.device("cuda", 0))
    assert calls == ["pin", ("to", "cuda:0", True)] and out.tolist() == rows.tolist()
    calls.clear()
    to_device(rows, torch.device("cpu"))
    assert calls == [("to", "cpu", True)]  # nothing to pin for the CPU


def test_side_jobs_read_the_queued_steps_before_waiting_on_the_device(small_data, tmp_path, monkeypatch):
    """A held-out evaluation and an in-loop benchmark wait for the device; the steps queued before them are read
    first, so that wait lands in those steps' step time (and MFU) instead of vanishing from every row."""
    import tstcli.train.hooks.bench as bench_hook
    import tstcli.train.trainer as trainer
    from conftest import SHARED
    queued, box = [], {}
    for module, name in ((trainer, "heldout_loss"), (bench_hook, "evaluate")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k:
                            queued.append((_name, box["t"].state.step, len(box["t"].log))) or _real(*a, **k))
    box["t"] = t = _trainer(small_data, tmp_path, **{
        "train.log_every": 5, "eval.every": 4, "eval.bench": ["arc_easy"], "eval.bench_limit": 2,
        "eval.bench_every": 3, "eval.bench_data_dir": str(SHARED), "checkpoint.every": 100})
    shutil.copyfile(small_data / "tokenizer.json", tmp_path / "tokenizer.json")  # as `tst train` puts it there
    t.run()
    assert {(name, step) for name, step, _ in queued} >= {("heldout_loss", 4), ("evaluate", 3), ("evaluate", 9)}
    assert [n for _, _, n in queued] == [0] * len(queued), queued


def test_the_host_groups_wait_as_long_as_the_recipe_says(tmp_path):
    """The stop vote's and the background writer's gloo groups time out after `distributed.timeout_s`, like the
    job's own group (a new group would otherwise wait torch's default 30 minutes for a dead rank)."""
    import datetime

    import torch.distributed as dist

    from tstcli.parallel.world import StopVote, World
    from tstcli.run.saver import Saver
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rendezvous'}")
    try:
        two = World(0, 2, 0)  # says "distributed"; the group itself has this one process
        saver = Saver(tmp_path / "ckpt", two, 0, True, timeout_s=9)
        groups = [StopVote(two, 7).group, saver._group]
        saver.close()
        timeouts = [g._get_backend(torch.device("cpu")).options._timeout for g in groups]
        assert timeouts == [datetime.timedelta(seconds=7), datetime.timedelta(seconds=9)]
        assert StopVote(two, 7).cast(True) is False  # the vote is read at the next step
    finally:
        dist.destroy_process_group()

