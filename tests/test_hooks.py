"""Side jobs as hooks, through the real CLI: TensorBoard and W&B receive every row (read back with their own
readers), a tracker that is missing or fails costs one warning line and never the run, in-loop benchmarks equal
`tst eval` on the same checkpoint and survive a resume, the profiler window writes a trace, the console shows
elapsed time and an ETA, and training and `tst eval` report one held-out loss for one checkpoint."""
import glob
import json
import os
import shutil
import struct
import zlib

import pytest

from conftest import SHARED, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from tstcli.run.metrics import SCHEMA, read_rows

BENCH = {"eval.bench": ["arc_easy", "hellaswag"], "eval.bench_limit": 6, "eval.bench_every": 4,
         "eval.bench_data_dir": str(SHARED)}


def _train(small_data, tmp_path, env=None, name="run", **overrides):
    recipe = write_recipe(tmp_path / f"{name}.toml", small_recipe(small_data, **overrides))
    return run_cli("train", recipe, "--run-dir", tmp_path / name, env=env), tmp_path / name


def _losses(run, kind="train", field="loss"):
    return {r["step"]: r[field] for r in read_rows(run, kind)}


@pytest.fixture(scope="module")
def tracked(small_data, tmp_path_factory):
    """One run with both trackers on (W&B offline), benchmarks in the loop and a profiler window."""
    tmp = tmp_path_factory.mktemp("tracked")
    res, run = _train(small_data, tmp, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
                      **{"log.tensorboard": True, "log.wandb": True, "train.profile_steps": [2, 3], **BENCH})
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr
    return res, run


@pytest.mark.slow
def test_every_row_carries_the_documented_fields_of_its_kind(tracked):
    _, run = tracked
    rows = read_rows(run)
    assert {r["kind"] for r in rows} == {"train", "val", "bench", "checkpoint"}
    for r in rows:
        assert set(SCHEMA[r["kind"]]) <= set(r), r


def test_tensorboard_events_hold_the_metrics_rows(tracked):
    import logging

    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    _, run = tracked
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0})
    acc.Reload()
    got = lambda tag: {e.step: e.value for e in acc.Scalars(tag)}  # noqa: E731
    f32 = lambda xs: {k: pytest.approx(v, rel=1e-6) for k, v in xs.items()}  # noqa: E731  events store float32
    assert got("train/loss") == f32(_losses(run)) and len(got("train/loss")) == 12
    assert got("checkpoint/total_s") == f32(_losses(run, "checkpoint", "total_s"))  # every 2 steps: 6 saves
    assert got("val/val_loss") == f32(_losses(run, "val", "val_loss"))
    bench = {r["step"]: r["acc_norm"] for r in read_rows(run, "bench") if r["task"] == "hellaswag"}
    assert got("bench/hellaswag/acc_norm") == f32(bench) and set(bench) == {4, 8, 12}
    assert json.loads((run / "trackers.json").read_text())["tensorboard_dir"] == "tensorboard"


def _wandb_records(path):
    """The records of a local W&B run file (leveldb-log framing: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2
    data, pos, buf = open(path, "rb").read(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        crc, n, typ = struct.unpack_from("<IHB", data, pos)
        if left < 7 or (crc, n, typ) == (0, 0, 0):
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + n]
        assert zlib.crc32(chunk, zlib.crc32(bytes([typ]))) == crc
        pos += 7 + n
        buf = chunk if typ in (1, 2) else buf + chunk
        if typ in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _wandb_history(run):
    run_id = json.loads((run / "trackers.json").read_text())["wandb_run_id"]
    rows = {}
    for path in sorted(glob.glob(str(run / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))):
        for rec in _wandb_records(path):
            if rec.WhichOneof("record_type") == "history":
                items = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item}
                rows.setdefault(rec.history.step.num, {}).update(items)
    return rows


def test_wandb_offline_run_files_hold_the_losses(tracked):
    _, run = tracked
    history = _wandb_history(run)
    assert {s: h["train/loss"] for s, h in history.items() if "train/loss" in h} == pytest.approx(_losses(run))
    assert {s: h["val/val_loss"] for s, h in history.items() if "val/val_loss" in h} == \
        pytest.approx(_losses(run, "val", "val_loss"))


def test_profiler_window_writes_a_chrome_trace(tracked):
    res, run = tracked
    traces = list((run / "profile").glob("*trace*.json"))
    assert len(traces) == 1 and "00000002-00000003" in traces[0].name
    assert json.loads(traces[0].read_text())["traceEvents"]
    assert "profile: steps 2-3 traced to" in res.stderr


def test_in_loop_benchmarks_equal_tst_eval_of_the_checkpoint(tracked):
    _, run = tracked
    rows = [r for r in read_rows(run, "bench") if r["step"] == 4]
    assert {r["task"] for r in rows} == {"arc_easy", "hellaswag"}
    out = run_cli("eval", run, "--step", 4, "--bench", "arc_easy,hellaswag", "--limit", 6, "--data-dir", SHARED,
                  "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    for r in rows:
        ref = results[r["task"]]
        assert (r["n"], r["acc"], r.get("acc_norm")) == (ref["n"], ref["acc"], ref.get("acc_norm")) and r["n"] == 6


@pytest.mark.slow
def test_resume_keeps_bench_rows_and_the_same_tracker_runs(tracked, tmp_path):
    _, run = tracked
    b = tmp_path / "b"
    shutil.copytree(run, b)
    for ckpt in (b / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > 6:
            shutil.rmtree(ckpt)
    res = run_cli("resume", b, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr
    assert read_rows(b, "bench") == read_rows(run, "bench") and _losses(b) == _losses(run)
    assert json.loads((b / "trackers.json").read_text()) == json.loads((run / "trackers.json").read_text())
    assert len(glob.glob(str(b / "wandb" / "offline-run-*"))) == 2  # the same run id, continued
    assert {s: h["train/loss"] for s, h in _wandb_history(b).items() if "train/loss" in h} == \
        pytest.approx(_losses(run))


@pytest.mark.parametrize("module,body", [
    ("wandb", "raise ImportError('No module named wandb')"),
    ("wandb", "def init(**kw):\n    raise RuntimeError('api.wandb.ai unreachable: no network')\n"
              "class Settings:\n    def __init__(self, **kw): pass\n"),
    ("tensorboard", "raise ImportError('No module named tensorboard')"),
], ids=["wandb-missing", "wandb-failing", "tensorboard-missing"])
def test_a_missing_or_failing_tracker_is_one_warning_and_the_run_completes(small_data, tmp_path, module, body):
    fake = tmp_path / "fake" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(body + "\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")])}
    key = "log.wandb" if module == "wandb" else "log.tensorboard"
    res, run = _train(small_data, tmp_path, env=env, **{key: True, "train.steps": 4})
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tracking is off" in warnings[0], res.stderr
    assert ("pip install 'tst[" in warnings[0]) == ("ImportError" in body)
    assert sorted(_losses(run)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_missing_benchmark_files_are_one_line_before_training(small_data, tmp_path):
    res, run = _train(small_data, tmp_path, env={"HF_HUB_OFFLINE": "1"},
                      **{"eval.bench": ["arc_easy"], "eval.bench_data_dir": str(tmp_path / "empty")})
    assert_one_line_error(res, 3, "arc_easy")
    assert not run.exists()  # nothing written: fix the path and run the same command again
    bad = write_recipe(tmp_path / "bad.toml", small_recipe(small_data, **{"eval.bench": ["hellaswagg"]}))
    assert_one_line_error(run_cli("train", bad, "--run-dir", tmp_path / "bad"), 2, "eval.bench", "hellaswagg")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_one_held_out_loss_per_checkpoint_and_the_console(small_data, tmp_path):
    res, run = _train(small_data, tmp_path, **{"train.log_every": 4})
    assert res.returncode == 0, res.stderr
    final = read_rows(run, "val")[-1]
    out = run_cli("eval", run, "--json")
    held = json.loads(out.stdout)["heldout"]
    assert held["val_loss"] == final["val_loss"] and held["tokens"] == final["val_tokens"] == 2 * 4 * 32
    assert f"{final['val_tokens']:,} tokens" in run_cli("eval", run).stdout
    lines = [line for line in res.stderr.splitlines() if line.startswith("step ") and " loss " in line]
    assert [line.split()[1] for line in lines] == ["4/12", "8/12", "12/12"]
    assert all(" elapsed " in line and " eta " in line and " val " not in line for line in lines)
    assert lines[-1].endswith("eta 0s")


def test_compare_shows_an_in_loop_benchmark(tracked):
    _, run = tracked
    out = run_cli("compare", run, "--metric", "hellaswag.acc_norm", "--x", "steps", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["higher_better"] is True and res["runs"][0]["final_x"] == 12
    assert_one_line_error(run_cli("compare", run, "--metric", "piqa.acc"), 4, "piqa.acc")


def test_eta_counts_when_steps_ran_not_when_their_rows_arrived(capsys):
    """Rows reach the console in bursts (read from the device every log_every steps): the ETA comes from the
    steps' own `elapsed_s`, so 25 rows arriving at once after 25 steps of 0.1 s still say 0.1 s per step."""
    from types import SimpleNamespace

    from tstcli.train.hooks.console import Console
    console, t = Console(total_steps=300, log_every=25, tty=False), SimpleNamespace()
    for step in range(1, 51):  # arrive in two bursts (steps 1-25, 26-50), milliseconds apart
        console.on_row(t, {"kind": "train", "step": step, "phase": 1, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0,
                           "tokens_per_s": 1.0, "positions_per_s": 1.0, "mfu": None, "data_share": 0.0,
                           "elapsed_s": 2.0 + 0.1 * step, "epoch": 0})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["25/300", "50/300"]
    assert lines[-1].endswith("eta 25s")  # 250 steps left at 0.1 s
