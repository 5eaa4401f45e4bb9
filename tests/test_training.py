"""Training loop behaviours: modes, ablation switches, schedules, divergence, dry run."""
import json
import math

import pytest
import torch

from conftest import run_cli, small_recipe, write_recipe
from tstcli.errors import DivergedError
from tstcli.parallel.world import World
from tstcli.train.hooks import Hook
from tstcli.train.hooks.defaults import default_hooks
from tstcli.train.hooks.switch import PhaseSwitch
from tstcli.train.schedule import lr_factor
from tstcli.train.session import local_trainer


def _trainer(small_data, tmp_path, extra_hooks=(), **kw):
    r = small_recipe(small_data, **kw)
    hooks = default_hooks(r, World(), tmp_path / "no-bench-data", console=False) + list(extra_hooks)
    return local_trainer(r, tmp_path, hooks=hooks)


class PoisonGradients(Hook):
    """Makes the gradients of the given steps non-finite, as an overflow would: a public hook point, no patching."""

    def __init__(self, steps):
        self.steps = set(steps)

    def after_backward(self, t, step):
        if step in self.steps:
            next(iter(t.model.parameters())).grad.fill_(float("nan"))


@pytest.mark.parametrize("mode,width", [("full", 3 * 33), ("input", 3 * 33), ("output", 2 * 33)])
def test_each_mode_trains_through_both_phases(small_data, tmp_path, mode, width):
    t = _trainer(small_data, tmp_path, **{"tst.mode": mode, "train.steps": 8})
    assert t.plan.row_widths[1] == width and t.plan.row_widths[2] == 33
    res = t.run()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["kind"] == "train"]
    assert [x["phase"] for x in train] == [1] * 4 + [2] * 4
    assert all(math.isfinite(x["loss"]) for x in train)
    assert res["tokens_phase1"] == 4 * 4 * width and res["tokens_phase2"] == 4 * 4 * 33


def test_switch_keeps_everything_by_default_and_ablations_reset(small_data, tmp_path):
    t = _trainer(small_data, tmp_path / "a")
    t.train_step(1)
    emb = t.model.get_input_embeddings().weight.detach().clone()
    state = len(t.optimizer.state)
    PhaseSwitch().apply(t)
    assert torch.equal(emb, t.model.get_input_embeddings().weight) and len(t.optimizer.state) == state
    t2 = _trainer(small_data, tmp_path / "b", **{"tst.reinit_embedding": True, "tst.reset_optimizer": True,
                                                   "model.tie_embeddings": False, "tst.reinit_head": True})
    t2.train_step(1)
    emb2, head2 = (t2.model.get_input_embeddings().weight.detach().clone(), t2.model.output.weight.detach().clone())
    PhaseSwitch().apply(t2)
    assert not torch.equal(emb2, t2.model.get_input_embeddings().weight)
    assert not torch.equal(head2, t2.model.output.weight)
    assert len(t2.optimizer.state) == 0


def test_wsd_and_cosine_schedules():
    f = lambda s, kind="wsd": lr_factor(s, 100, 10, kind, 0.2, 0.1)  # noqa: E731
    assert [f(s) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert f(11) == f(80) == 1.0  # stable
    decay = [f(s) for s in range(81, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:])) and 0.1 < decay[-1] < 0.2
    cos = [f(s, "cosine") for s in range(11, 101)]
    assert cos[0] == pytest.approx(1.0, abs=1e-3) and all(a >= b for a, b in zip(cos, cos[1:]))
    assert 0.1 < cos[-1] < 0.11


def test_restart_schedule_warms_up_again_at_the_switch(small_data, tmp_path):
    t = _trainer(small_data, tmp_path, **{"tst.restart_schedule": True})
    assert t.lr_at(7) == pytest.approx(t.lr_at(1)) and t.lr_at(7) < t.lr_at(6)
    t2 = _trainer(small_data, tmp_path / "x")
    assert t2.lr_at(7) > t2.lr_at(1)


def test_non_finite_gradient_stops_before_the_update(small_data, tmp_path):
    t = _trainer(small_data, tmp_path, extra_hooks=[PoisonGradients({1})])
    before = [p.detach().clone() for p in t.model.parameters()]
    t.record(1, t.train_step(1), 0.1)  # queued: the outcome is read at the next flush
    with pytest.raises(DivergedError, match="step 1 \\(phase 1\\)"):
        t.flush()
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters())), "the bad step must not be applied"
    assert len(t.optimizer.state) == 0


def test_divergence_exits_5_through_the_cli_and_keeps_the_checkpoint(small_data, tmp_path):
    # An absurd learning rate and init blow the weights up after the first update: the run must stop with exit 5.
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{
        "train.lr": 1000.0, "model.init_std": 10.0, "train.warmup_steps": 0, "train.grad_clip": 0.0,
        "checkpoint.every": 1}))
    r = run_cli("train", recipe, "--run-dir", tmp_path / "run")
    assert r.returncode == 5, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: training diverged at step") and "phase 1" in err
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "state.json").is_file()


def test_dry_run_prints_the_plan_and_trains_nothing(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    r = run_cli("train", recipe, "--dry-run", "--json", "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["phases"]["1"]["steps"] == 6 and plan["phases"]["1"]["row_tokens"] == 99
    assert plan["phases"]["1"]["tokens"] == 6 * 4 * 99 and plan["phases"]["2"]["tokens"] == 6 * 4 * 33
    assert plan["coverage"]["covered_without_repetition"] is True
    assert plan["parameters"] > 0 and plan["flops_per_step"] == plan["flops_per_position"] * 4 * 32
    assert plan["devices"]["1"]["memory_gib"]["total"] > 0 and plan["devices"]["1"]["accumulation_steps"] == 1
    assert not (tmp_path / "run").exists()
    text = run_cli("train", recipe, "--dry-run").stdout
    assert "phase 1 (superposition, s=3" in text and "memory about" in text
    assert "loss: chunked, 512 positions at a time" in text and "full logits would need" in text
    assert plan["checkpoint_gib"] > 0 and plan["devices"]["1"]["checkpoint_staging_gib"] == plan["checkpoint_gib"]
    assert "GiB of host memory per process for the copy being written" in text
    fsdp = json.loads(run_cli("train", recipe, "--dry-run", "--json", "--nproc", "2", "--set",
                              "distributed.strategy=fsdp").stdout)["devices"]["2"]
    assert fsdp["checkpoint_staging_gib"] == plan["checkpoint_gib"] / 2  # each rank stages its shard
    sync = json.loads(run_cli("train", recipe, "--dry-run", "--json", "--set", "checkpoint.async=false").stdout)
    assert sync["devices"]["1"]["checkpoint_staging_gib"] == 0
    full = run_cli("train", recipe, "--dry-run", "--json", "--set", "train.loss_chunk_size=0").stdout
    mem = json.loads(full)["devices"]["1"]["memory_gib"]
    assert mem["logits"] == mem["logits_full"] and mem["total"] == mem["total_full_logits"]


def test_short_corpus_repeats_in_new_epochs_and_says_so(tmp_path):
    src = tmp_path / "small.jsonl"
    src.write_text("".join(json.dumps({"text": f"The whale number {i} swims in the sea near ship {i % 7}."}) + "\n"
                           for i in range(300)))
    r = small_recipe(tmp_path / "data", **{"data.sources": [str(src)], "data.vocab_size": 300,
                                          "data.val_fraction": 0.1, "train.steps": 40, "eval.batches": 1})
    recipe = write_recipe(tmp_path / "r.toml", r)
    res = run_cli("train", recipe, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert "phase 1: its rows are exhausted" in res.stderr and "phase 2: its rows are exhausted" in res.stderr
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for phase in (1, 2):
        assert max(x["epoch"] for x in rows if x["kind"] == "train" and x["phase"] == phase) >= 1
    prep = run_cli("prepare", recipe)
    assert "corpus too small for the recipe" in prep.stdout and "epochs of its rows (repeats)" in prep.stdout


def test_skip_nonfinite_steps_skips_up_to_the_bound_then_stops(small_data, tmp_path):
    t = _trainer(small_data, tmp_path, extra_hooks=[PoisonGradients({2, 3, 5})], **{"train.skip_nonfinite_steps": 2})
    with pytest.raises(DivergedError, match="step 5 \\(phase 1\\)"):
        t.run()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["step"]) for x in rows if x["kind"] in ("skip", "train")] == [
        ("train", 1), ("skip", 2), ("skip", 3), ("train", 4)]
    assert t.state.skipped == 2


def _counting(forward, counts, i):
    def wrapped(*args):
        counts[i] += 1
        return forward(*args)
    return wrapped


@pytest.mark.parametrize("policy", ["selective", "full"])
def test_activation_checkpointing_recomputes_the_same_numbers(small_data, tmp_path, policy):
    """Recomputing block activations in the backward changes memory, not results: bitwise equal losses and
    gradient norms (fp32, eager)."""
    runs, calls = {}, {}
    for p in ("none", policy):
        t = _trainer(small_data, tmp_path / p, **{"distributed.activation_checkpointing": p, "model.n_layers": 3})
        counts = [0, 0, 0]
        for i, layer in enumerate(t.model.layers):  # count each block's attention computations
            layer.attention.forward = _counting(layer.attention.forward, counts, i)
        runs[p] = [(o.loss.item(), o.grad_norm.item()) for o in (t.train_step(s) for s in range(1, 9))]
        calls[p] = counts
    assert runs[policy] == runs["none"]
    assert calls["none"] == [8, 8, 8]  # one forward per step and block...
    assert calls[policy] == ([16, 8, 16] if policy == "selective" else [16, 16, 16])  # ...plus the recomputation


TINY_SHAPE = {"model.dim": 128, "model.n_layers": 4, "model.n_heads": 4, "model.n_kv_heads": 2,
              "model.max_seq_len": 512, "model.tie_embeddings": True, "train.batch_size": 16, "train.seq_len": 128,
              "tst.bag_size": 4}


def _losses_and_weights(t, steps):
    losses = [(o.loss.item(), o.grad_norm.item()) for o in (t.train_step(s) for s in range(1, steps + 1))]
    return losses, torch.cat([p.detach().flatten() for p in t.model.parameters()])


def _gaps(runs, name):
    """How far run `name` drifts from the full-logits run: max relative loss and gradient-norm gaps, mean and max
    absolute weight gaps."""
    (ref, w_ref), (got, w_got) = runs["full"], runs[name]
    w = (w_ref - w_got).abs()
    return {"loss": max(abs(a - b) / a for (a, _), (b, _) in zip(ref, got)),
            "grad_norm": max(abs(a - b) / a for (_, a), (_, b) in zip(ref, got)),
            "w_mean": w.mean().item(), "w_max": w.max().item()}


def _chunked_full_accumulated(small_data, tmp_path, chunk, steps, **kw):
    """The same run three ways: full logits, chunked loss, and full logits with the batch split into two
    micro-batches — a summation order the trainer already accepts, which sets the scale of a harmless gap."""
    runs = {}
    for name, extra in (("full", {"train.loss_chunk_size": 0}), ("chunked", {"train.loss_chunk_size": chunk}),
                        ("accumulated", {"train.loss_chunk_size": 0,
                                         "train.micro_batch_size": kw.get("train.batch_size", 4) // 2})):
        t = _trainer(small_data, tmp_path / name, **kw, **extra, **{"train.steps": steps})
        runs[name] = _losses_and_weights(t, steps)
    return runs


@pytest.mark.parametrize("mode", ["full", "output"])
def test_chunked_loss_trains_like_full_logits_fp32(small_data, tmp_path, mode):
    """The tiny recipe's shape (2,048 positions a step, tied head), 3 steps of each phase, chunks of 300 positions
    (not a divisor) against the full logits, fp32: losses within 1e-5 relative, the first step's gradient norm too
    (same weights, same gradient). Later gradient norms and the weights drift by AdamW's normalised update g/√v,
    which turns 1e-7 summation-order differences in near-zero gradient entries into a visible fraction of an lr
    step; their aggregate must stay within twice the drift of splitting the batch into two micro-batches (observed:
    a quarter to a half of it), single weights within 1e-4."""
    runs = _chunked_full_accumulated(small_data, tmp_path, 300, 6, **TINY_SHAPE, **{"tst.ratio": 0.5,
                                                                                      "tst.mode": mode})
    (full, _), (chunked, _) = runs["full"], runs["chunked"]
    assert abs(full[0][1] - chunked[0][1]) <= 1e-5 * full[0][1]
    gap, accumulated = _gaps(runs, "chunked"), _gaps(runs, "accumulated")
    assert gap["loss"] <= 1e-5, gap
    assert all(gap[k] <= 2 * accumulated[k] for k in ("grad_norm", "w_mean")), (gap, accumulated)
    assert gap["w_max"] <= 1e-4, gap  # single entries: a sign flip of a near-zero gradient; 3% of an lr step


def test_chunked_loss_trains_like_full_logits_bf16(small_data, tmp_path):
    """bf16 autocast (the small shape: bf16 matmuls are ~100x slower than fp32 on AVX2-only CPUs), 8 steps. Both
    paths take the head's matmul in bf16; they differ in how the head's gradient is summed (one bf16 matmul over all
    positions vs per-chunk bf16 products summed in fp32). Within twice the drift of two micro-batches (as in fp32;
    observed: about 0.7x it) in losses, gradient norms and mean weights; losses within 1e-3."""
    runs = _chunked_full_accumulated(small_data, tmp_path, 48, 8, **{"train.dtype": "bf16"})
    gap, accumulated = _gaps(runs, "chunked"), _gaps(runs, "accumulated")
    assert all(gap[k] <= 2 * accumulated[k] for k in ("loss", "grad_norm", "w_mean")), (gap, accumulated)
    assert gap["loss"] <= 1e-3 and gap["w_max"] <= 2 * 3e-3, gap  # single entries: within two lr steps
