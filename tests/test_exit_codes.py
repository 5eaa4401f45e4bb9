"""Every exit path returns its documented code, with one line and no temporary files left (issue #17)."""
import json
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT, SHARED, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error

TINY = ROOT / "recipes" / "tiny.toml"
CORPUS = SHARED / "corpus"


@pytest.fixture(scope="module")
def short_run(finished_run):
    return finished_run  # only read by `tst eval`


def _signal_when(args, ready, signum, settle=1.0):
    """Start `tst ARGS`, wait until ready(stderr so far) holds, send `signum`, return (code, stderr)."""
    with tempfile.TemporaryFile("w+") as errf:
        p = subprocess.Popen([sys.executable, "-m", "tstcli", *map(str, args)], stdout=subprocess.DEVNULL,
                             stderr=errf, text=True, stdin=subprocess.DEVNULL)

        def err():
            errf.seek(0)
            return errf.read()
        deadline = time.time() + 300
        while not ready(err()):
            assert p.poll() is None, err()
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(settle)
        assert p.poll() is None, "finished before the signal: give it more work"
        p.send_signal(signum)
        p.wait(timeout=300)
        return p.returncode, err()


def _big_prepare(data_dir):
    return ["prepare", TINY, "--set", f'data.dir="{data_dir}"', "--set", "data.tokenizer_train_chars=0",
            "--set", f'data.sources=["{CORPUS}"]', "--set", "data.unit_mb=1"]  # six files, six work units


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_prepare_exits_128_plus_signum_and_cleans_up(tmp_path, signum, code, word):
    data = tmp_path / "data"
    # signalled once a unit (a file) is finished, while the next is being tokenized
    rc, err = _signal_when(_big_prepare(data), lambda _: any((data / ".prepare-work" / "units").glob("*.json")),
                           signum, settle=0.2)
    assert rc == code, err
    assert err.strip().splitlines()[-1] == f"error: {word}" and "Traceback" not in err
    assert not (data / "manifest.json").exists()
    kept = assert_only_finished_units(data / ".prepare-work")
    assert kept, "the finished units are kept for the re-run"
    again = run_cli(*_big_prepare(data))  # finishes the remaining units only
    assert again.returncode == 0, again.stderr
    assert f"tokenizing {6 - kept} of 6 work units" in again.stderr and not (data / ".prepare-work").exists()


def assert_only_finished_units(work) -> int:
    """What an interrupted preparation leaves: the shards of finished units (each listed in its unit's record, and
    kept for the re-run), never a partly written one. Returns how many units are finished."""
    if not work.exists():
        return 0
    records = [json.loads(rec.read_text()) for rec in (work / "units").glob("*.json")]
    listed = {x["file"] for rec in records for split in rec["shards"].values() for x in split}
    assert {p.name for p in work.glob("*.bin")} == listed
    return len(records)


@pytest.mark.slow
def test_ctrl_c_while_train_prepares_exits_130_and_leaves_no_run_dir(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    args = ["train", *_big_prepare(data)[1:], "--run-dir", run]
    rc, err = _signal_when(args, lambda e: "work units" in e, signal.SIGINT)
    assert rc == 130 and "error: interrupted" in err and "Traceback" not in err, err
    assert not run.exists() and not (data / "manifest.json").exists()
    assert_only_finished_units(data / ".prepare-work")


def test_ctrl_c_during_eval_exits_130(short_run, tmp_path):
    args = ["eval", short_run, "--bench", "hellaswag", "--data-dir", SHARED]
    rc, err = _signal_when(args, lambda err: "eval: " in err, signal.SIGINT)  # in the evaluation, past imports
    assert rc == 130 and err.strip().splitlines()[-1] == "error: interrupted", err


@pytest.mark.parametrize("damage", ["truncated", "damaged deflate block"])
def test_truncated_or_damaged_gzip_benchmark_file_exits_3(short_run, tmp_path, damage):
    bench = tmp_path / "bench" / "hellaswag"
    bench.mkdir(parents=True)
    data = bytearray((SHARED / "hellaswag" / "hellaswag_val.jsonl.gz").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        for i in range(1000, 1008):
            data[i] ^= 0xFF
    (bench / "hellaswag_val.jsonl.gz").write_bytes(bytes(data))
    r = run_cli("eval", short_run, "--bench", "hellaswag", "--data-dir", tmp_path / "bench")
    assert_one_line_error(r, 3, "hellaswag_val.jsonl.gz", "cannot read")


def test_corrupt_gzip_member_in_a_corpus_exits_3(tmp_path):
    data = bytearray((CORPUS / "moby_dick.jsonl.gz").read_bytes())
    for i in range(1000, 1008):  # a damaged deflate block: zlib.error "invalid distance too far back"
        data[i] ^= 0xFF
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(bytes(data))
    r = run_cli("prepare", TINY, "--set", f'data.dir="{tmp_path / "d"}"', "--set", f'data.sources=["{bad}"]')
    assert_one_line_error(r, 3, "bad.jsonl.gz", "cannot read")
    assert not (tmp_path / "d" / ".prepare-work").exists()


def test_sigterm_during_the_held_out_evaluation_stops_at_that_step(small_data, tmp_path):
    """One process: a signal while step 5's held-out evaluation runs saves step 5 and stops (no extra step)."""
    import json

    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{
        "train.steps": 400, "eval.every": 5, "eval.batches": 100, "checkpoint.every": 1000}))
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"

    def step_5_trained(_):
        return metrics.exists() and '"step": 5,' in metrics.read_text()
    rc, err = _signal_when(["train", recipe, "--run-dir", run], step_5_trained, signal.SIGTERM, settle=0)
    assert rc == 143, err
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert max(x["step"] for x in rows if x["kind"] == "train") == 5
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000005"]


def test_an_unreachable_hub_is_one_line_without_retry_noise(short_run, tmp_path):
    """No network (the hub's host does not resolve), no HF_HUB_OFFLINE: the cache is asked at once, no retries."""
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://hub.tst-unreachable.invalid",
           "HF_HOME": str(tmp_path / "hf"), "TST_EVAL_DATA": str(tmp_path / "none")}
    r = run_cli("eval", short_run, "--bench", "mmlu", "--limit", "1", env=env)
    assert_one_line_error(r, 3, "mmlu", "cannot be reached")
    assert "Retrying" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr


@pytest.mark.slow
def test_warmup_as_long_as_the_run_is_a_warning(tmp_path):
    r = run_cli("train", TINY, "--set", "train.steps=20", "--dry-run")
    assert r.returncode == 0
    assert [l for l in r.stderr.splitlines() if l.startswith("warning:")] == [
        "warning: train.warmup_steps (30) >= train.steps (20): the learning rate never leaves its warmup (no stable "
        "phase, no decay); lower train.warmup_steps"]
    assert "warning" not in run_cli("train", TINY, "--dry-run").stderr
