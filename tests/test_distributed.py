"""Data parallelism under torchrun on the CPU (gloo backend, 2 processes): DDP and FSDP2 give the losses of one
process with the same global batch, checkpoints reshard across world sizes, a killed rank or a SIGTERM to the
job loses nothing, and resuming continues exactly.

Tolerance for 1 vs 2 processes: the rows of every step are the same (the loader deals a global batch to ranks),
so the runs differ only in floating-point summation order (gradients averaged over ranks instead of over one
batch, loss means over half batches). In fp32 that is ~1e-7 relative per operation; over 12 steps the observed
gap is ~1e-6. We allow 1e-4. Real mistakes are far larger: a rank training on the wrong rows or without the
gradient all-reduce moves the loss by >1e-3 within two steps, and a wrong gradient scale shows in grad_norm.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import run_cli, small_recipe, train_small, wait_until, write_recipe

pytestmark = pytest.mark.slow  # every test here starts torchrun (two or three processes)

TOL = 1e-4


def torchrun(nproc, *args, timeout=600, popen=False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tstcli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=timeout)


def rows(run_dir, kind="train"):
    out = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in out if r["kind"] == kind}


def assert_close_runs(a, b, tol=TOL, grad_rtol=TOL):
    ta, tb = rows(a), rows(b)
    assert ta.keys() == tb.keys() and len(ta) == 12
    for s in ta:
        assert ta[s]["phase"] == tb[s]["phase"]
        assert abs(ta[s]["loss"] - tb[s]["loss"]) < tol, (s, ta[s]["loss"], tb[s]["loss"])
        assert abs(ta[s]["grad_norm"] - tb[s]["grad_norm"]) < grad_rtol * max(1.0, ta[s]["grad_norm"]), s
        assert ta[s]["tokens"] == tb[s]["tokens"]
    va, vb = rows(a, "val"), rows(b, "val")
    assert va.keys() == vb.keys()
    assert all(abs(va[s]["val_loss"] - vb[s]["val_loss"]) < tol for s in va)


@pytest.fixture(scope="module")
def one_process(small_data, tmp_path_factory):
    # the chunked head loss in several chunks per rank (64 positions each): under FSDP2 the head is gathered
    # inside the objective's forward and the loss applies it chunk by chunk
    return train_small(small_data, tmp_path_factory.mktemp("dist"), "one", **{"train.loss_chunk_size": 24})


@pytest.mark.parametrize("strategy,micro", [("ddp", 0), ("fsdp", 0), ("ddp", 1), ("fsdp", 1)],
                         ids=["ddp", "fsdp", "ddp-accumulate", "fsdp-accumulate"])
def test_two_processes_match_one_process_through_both_phases(one_process, tmp_path, strategy, micro):
    """Each rank reads 2 of the 4 rows of a step: in one micro-batch, or in two with the gradient accumulated
    locally and communicated only after the second (DDP's no_sync, FSDP2's requires_gradient_sync)."""
    recipe, one = one_process
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "two", "--set", f'distributed.strategy="{strategy}"',
                 "--set", f"train.micro_batch_size={micro}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(2 processes)" in r.stderr
    assert r.stdout.count("final held-out loss") == 1, "results are printed by rank 0 only"
    assert "FutureWarning" not in r.stderr and "broadcast_buffers" not in r.stderr
    assert_close_runs(one, tmp_path / "two")
    ckpt = tmp_path / "two" / "checkpoints" / "step-00000012"
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    if strategy == "fsdp":  # sharded: one safetensors file per rank
        assert len(list(ckpt.glob("shard-*.safetensors"))) == 2


def test_fsdp_compiled_per_block_bf16_with_activation_checkpointing(one_process, small_data, tmp_path):
    """The GPU configuration, on the CPU: FSDP2 with bf16 parameters and fp32 gradient reduction, each block
    compiled, every other block recomputed. Compared with one eager bf16 process at bf16 tolerance."""
    _, _ = one_process
    recipe, _ = train_small(small_data, tmp_path, "one", **{"train.dtype": "bf16", "train.loss_chunk_size": 24})
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "two", "--set", 'distributed.strategy="fsdp"',
                 "--set", "train.compile=true", "--set", 'distributed.activation_checkpointing="selective"')
    assert r.returncode == 0, r.stderr[-3000:]
    # bf16 has ~3 significant digits, and FSDP2 also keeps the norm gains (and here the head, which the chunked
    # loss applies itself) in bf16 where autocast keeps fp32. Observed: losses within 8e-4; gradient norms within
    # 1% in phase 1 and up to 2.7% (one chunk) / 4.1% (chunks of 24) on the noisy steps just after the switch.
    assert_close_runs(tmp_path / "one", tmp_path / "two", tol=5e-3, grad_rtol=6e-2)


def test_in_loop_benchmarks_under_fsdp_equal_tst_eval_of_the_checkpoint(one_process, tmp_path):
    """Under FSDP2 every rank scores its share, one block gathered at a time: the rows equal `tst eval` of the
    checkpoint."""
    from conftest import SHARED
    recipe, _ = one_process
    run = tmp_path / "run"
    r = torchrun(2, "train", recipe, "--run-dir", run, "--set", 'distributed.strategy="fsdp"',
                 "--set", 'eval.bench=["arc_easy"]', "--set", "eval.bench_limit=5", "--set", "eval.bench_every=6",
                 "--set", f'eval.bench_data_dir="{SHARED}"')
    assert r.returncode == 0, r.stderr[-3000:]
    bench = rows(run, "bench")
    assert sorted(bench) == [6, 12]
    out = run_cli("eval", run, "--step", 12, "--bench", "arc_easy", "--limit", 5, "--data-dir", SHARED, "--json")
    assert out.returncode == 0, out.stderr
    ref = json.loads(out.stdout)["results"]["arc_easy"]
    assert (bench[12]["n"], bench[12]["acc"], bench[12]["acc_norm"]) == (ref["n"], ref["acc"], ref["acc_norm"]) == \
        (5, ref["acc"], ref["acc_norm"])


def _truncate_to(run, step):
    for ckpt in (run / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)


@pytest.mark.parametrize("saved_by,resumed_by", [(2, 1), (1, 2)])
def test_checkpoint_reshards_to_another_world_size(one_process, tmp_path, saved_by, resumed_by):
    """FSDP2 checkpoints of 2 ranks load in 1 process and the other way round; the global batch (and so the
    rows of every step) does not depend on the world size, so the run continues on the same data."""
    recipe, one = one_process
    run = tmp_path / "run"
    if saved_by == 2:
        r = torchrun(2, "train", recipe, "--run-dir", run, "--set", 'distributed.strategy="fsdp"')
    else:
        r = run_cli("train", recipe, "--run-dir", run, "--set", 'distributed.strategy="fsdp"')
    assert r.returncode == 0, r.stderr[-3000:]
    _truncate_to(run, 6)
    r = torchrun(2, "resume", run) if resumed_by == 2 else run_cli("resume", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"written by {saved_by} process(es), continuing on {resumed_by}" in r.stderr
    assert_close_runs(one, run)


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _wait_for_step(run, step, proc, timeout=300):
    def reached():
        m = run / "metrics.jsonl"
        return m.exists() and any(json.loads(l).get("step", 0) >= step for l in m.read_text().splitlines()
                                  if l.endswith("}"))
    wait_until(reached, f"step {step}", proc, timeout)


@pytest.fixture(scope="module")
def long_two_process_run(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-long")
    recipe = write_recipe(tmp / "r.toml", small_recipe(small_data, **{"train.steps": 40, "checkpoint.every": 3}))
    r = torchrun(2, "train", recipe, "--run-dir", tmp / "whole")
    assert r.returncode == 0, r.stderr[-3000:]
    return recipe, tmp / "whole"


def test_kill_one_rank_then_resume_the_job_continues_exactly(long_two_process_run, tmp_path):
    recipe, whole = long_two_process_run
    run = tmp_path / "run"
    p = torchrun(2, "train", recipe, "--run-dir", run, popen=True)
    _wait_for_step(run, 14, p)
    workers = _children(p.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # one rank dies; torchrun tears the job down
    p.communicate(timeout=120)
    assert p.returncode != 0
    r = torchrun(2, "resume", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {s: x["loss"] for s, x in rows(run).items()} == {s: x["loss"] for s, x in rows(whole).items()}
    assert {s: x["val_loss"] for s, x in rows(run, "val").items()} == \
        {s: x["val_loss"] for s, x in rows(whole, "val").items()}


def test_sigterm_to_the_job_every_rank_saves_then_resume_continues_exactly(long_two_process_run, tmp_path):
    recipe, whole = long_two_process_run
    run = tmp_path / "run"
    p = torchrun(2, "train", recipe, "--run-dir", run, popen=True)
    _wait_for_step(run, 10, p)
    os.kill(p.pid, signal.SIGTERM)  # what a scheduler does to the launcher; torchrun forwards it to every rank
    _, err = p.communicate(timeout=120)
    assert "checkpoint saved" in err, err[-3000:]
    stopped = max(rows(run))
    ckpt = run / "checkpoints" / f"step-{stopped:08d}"
    assert (ckpt / "state.json").is_file(), "the stop step's checkpoint is complete"
    assert len(list(ckpt.glob("shard-*.safetensors"))) >= 1
    r = torchrun(2, "resume", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"from step-{stopped:08d}" in r.stderr
    assert {s: x["loss"] for s, x in rows(run).items()} == {s: x["loss"] for s, x in rows(whole).items()}


def test_batch_that_does_not_split_over_the_ranks_is_one_line_exit_2(one_process, tmp_path):
    recipe, _ = one_process
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "x", "--set", "train.batch_size=3",
                 "--set", "train.micro_batch_size=1")
    assert r.returncode != 0
    assert "error: train.batch_size: 3 rows do not split evenly into 2 ranks" in r.stderr
    assert not (tmp_path / "x").exists(), "refused before anything is written"


def test_fsdp_mixture_of_experts_matches_one_process(small_data, tmp_path):
    """FSDP2 shards the experts' 3-D weights like any parameter. The load-balancing loss is computed per rank on
    the rank's own tokens (as in torchtitan and Megatron), which is not the same function as over the whole batch,
    so the comparison runs with its coefficient at 0; the rest is plain data parallelism."""
    moe = {"model.moe_experts": 4, "model.moe_ffn_dim": 32, "model.qk_norm": True, "model.moe_aux_loss_coef": 0.0}
    recipe, one = train_small(small_data, tmp_path, "one", **moe)
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "two", "--set", 'distributed.strategy="fsdp"')
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close_runs(one, tmp_path / "two")
    a, b = rows(one), rows(tmp_path / "two")
    assert all(abs(a[s]["expert_load_max"] - b[s]["expert_load_max"]) < 1e-6 for s in a)  # global fractions


@pytest.mark.parametrize("strategy,model", [("ddp", {}), ("fsdp", {}), ("fsdp", {
    "model.moe_experts": 4, "model.moe_ffn_dim": 32, "model.qk_norm": True, "model.moe_aux_loss_coef": 0.0})],
    ids=["ddp", "fsdp", "fsdp-moe"])
def test_muon_two_processes_match_one_process(small_data, tmp_path, strategy, model):
    """Muon under FSDP2 orthogonalises the whole matrix (gathered), each rank keeping its shard of the update (an
    orthogonalised shard would be another update); the MoE's expert stacks are sharded by expert."""
    recipe, one = train_small(small_data, tmp_path, "one", **{"train.optimizer": "muon", **model})
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "two", "--set", f'distributed.strategy="{strategy}"')
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close_runs(one, tmp_path / "two")
