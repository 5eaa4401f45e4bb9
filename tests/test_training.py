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
from tstcli.schedule import lr_factor
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
    f, f2 = t.schedule.factor, _trainer(small_data, tmp_path / "x").schedule.factor
    assert f(7) == pytest.approx(f(1)) and f(7) < f(6)
    assert f2(7) > f2(1)


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


@pytest.mark.slow
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


class RecordGradients(Hook):
    """Each step's raw gradient (after the backward pass, before clipping), all parameters in one flat vector."""

    def __init__(self):
        self.grads = {}

    def after_backward(self, t, step):
        self.grads[step] = torch.cat([p.grad.detach().flatten().clone() for p in t.model.parameters()])


def _chunked_against_full_logits(small_data, tmp_path, chunk, steps, **kw):
    """Per step, the chunked loss against the full logits FROM THE SAME STATE: before each step the chunked trainer
    takes the full-logits trainer's weights and optimizer state, so the two differ only in that step's loss
    computation, never by drift carried over from earlier steps (AdamW's g/√v turns 1e-7 summation-order differences
    in near-zero gradient entries into a visible fraction of an lr step, and such drift compounds: bounds on it
    measure the platform's kernels, not the loss). Returns per step the relative loss gap and the gradient's
    relative gap as a vector, ‖g_chunked − g_full‖ / ‖g_full‖."""
    rec = {"full": RecordGradients(), "chunked": RecordGradients()}
    t = {name: _trainer(small_data, tmp_path / name, extra_hooks=[rec[name]], **kw,
                        **{"train.steps": steps, "train.loss_chunk_size": size})
         for name, size in (("full", 0), ("chunked", chunk))}
    gaps = []
    for step in range(1, steps + 1):
        t["chunked"].model.load_state_dict(t["full"].model.state_dict())
        t["chunked"].optimizer.load_state_dict(t["full"].optimizer.state_dict())
        full, chunked = t["full"].train_step(step), t["chunked"].train_step(step)
        g_full, g_chunked = rec["full"].grads[step], rec["chunked"].grads[step]
        gaps.append({"loss": abs(full.loss.item() - chunked.loss.item()) / full.loss.item(),
                     "grad": ((g_chunked - g_full).norm() / g_full.norm()).item()})
    return gaps


FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23 = 1.2e-7
BF16_U = torch.finfo(torch.bfloat16).eps / 2  # 2^-8 = 3.9e-3: the most a rounding to bf16 moves a value, relative


@pytest.mark.parametrize("mode", ["full", "output"])
def test_chunked_loss_trains_like_full_logits_fp32(small_data, tmp_path, mode):
    """The tiny recipe's shape (N = 2,048 positions a step, tied head), 3 steps of each phase, chunks of 300
    positions (not a divisor) against the full logits, fp32. From the same state the two differ only in summation
    order: the loss is a mean over the N positions and each gradient entry of the head a sum over them, and N
    roundings in another order differ by about eps·√N relative (a random walk). Bound, for the loss and for the whole
    gradient vector: 2·eps·√N = 1.1e-5 (observed: 2.4e-7 at most, AVX2 and AVX-512 alike). A wrong chunking is far
    outside it: the last position dropped moves the gradient by 2e-3 or more, chunks overlapping by one position the
    loss by 5e-4."""
    gaps = _chunked_against_full_logits(small_data, tmp_path, 300, 6, **TINY_SHAPE, **{"tst.ratio": 0.5,
                                                                                         "tst.mode": mode})
    bound = 2 * FP32_EPS * math.sqrt(16 * 128)
    assert all(g["loss"] <= bound and g["grad"] <= bound for g in gaps), (bound, gaps)


def test_chunked_loss_trains_like_full_logits_bf16(small_data, tmp_path):
    """bf16 autocast (the small shape: bf16 matmuls are ~100x slower than fp32 on AVX2-only CPUs), 8 steps, chunks
    of 48 of the N = 128 positions. Both paths take the head's matmuls in bf16 and the loss in fp32; they differ in
    how the head's gradient is rounded (one bf16 matmul over all positions vs per-chunk bf16 products summed in
    fp32, and 1/N applied before or after the rounding): about one rounding more or less per entry, each within u =
    2^-8 relative, which reaches the rest of the model through dL/dh. Bound for the gradient vector: 2u = 7.8e-3
    (observed: 2.0e-3 at most). The logits are the same bf16 products in both; should a kernel round a position's
    logits differently, its loss moves by about u, and the mean of N by u/√N = 3.5e-4: the loss's bound (observed:
    1.6e-7). A wrong chunking: the last position dropped moves the gradient by 4e-2 or more, overlapping chunks the
    loss by 7e-3."""
    gaps = _chunked_against_full_logits(small_data, tmp_path, 48, 8, **{"train.dtype": "bf16"})
    assert all(g["loss"] <= BF16_U / math.sqrt(128) and g["grad"] <= 2 * BF16_U for g in gaps), gaps
