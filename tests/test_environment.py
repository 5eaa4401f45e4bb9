"""A hostile environment (full disk, read-only directories, damaged shards) is one line and exit 3 or 4, never
'a bug in tst', and nothing half-written is left behind (issue #17)."""
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error

TINY = ROOT / "recipes" / "tiny.toml"


def _cli_with_file_size_limit(limit_bytes, *args):
    """`tst ARGS` where no file may grow past `limit_bytes` (RLIMIT_FSIZE): writes beyond fail as on a full disk
    (EFBIG; Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-m", "tstcli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, preexec_fn=limit, timeout=600)


def _unwritable(tmp_path):
    """A directory path this process cannot create or write in (read-only for a normal user; under /sys for root,
    where permission bits do not apply), checked here, so the test does not pass vacuously."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    for candidate in (ro / "sub", __import__("pathlib").Path("/sys/tst-unwritable/sub")):
        try:
            candidate.mkdir(parents=True)
        except OSError:
            return candidate
        shutil.rmtree(candidate, ignore_errors=True)
    pytest.skip("no unwritable directory on this machine (root with a writable /sys)")


@pytest.fixture
def run_with_checkpoint(finished_run):
    return finished_run  # only read: the exports go elsewhere


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write_exits_4_and_resume_recovers(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 4}))
    run = tmp_path / "run"
    r = _cli_with_file_size_limit(200_000, "train", recipe, "--run-dir", run)
    assert_one_line_error(r, 4, str(run / "checkpoints"), "writing a checkpoint")
    assert not list((run / "checkpoints").glob(".tmp-*"))
    r = run_cli("resume", run)
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoints" / "step-00000004" / "state.json").is_file()


def test_export_onto_a_full_disk_exits_4_and_leaves_nothing(run_with_checkpoint, tmp_path):
    out = tmp_path / "hf"
    r = _cli_with_file_size_limit(60_000, "export", run_with_checkpoint, "--out", out)
    assert_one_line_error(r, 4, "writing the export", str(out))
    assert not out.exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_export_out_below_a_regular_file_exits_4(run_with_checkpoint, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_cli("export", run_with_checkpoint, "--out", tmp_path / "afile" / "hf")
    assert_one_line_error(r, 4, "afile")


def test_unwritable_data_dir_fails_before_training_a_tokenizer(tmp_path):
    data = _unwritable(tmp_path)
    r = run_cli("prepare", TINY, "--set", f'data.dir="{data}"')
    assert_one_line_error(r, 3, str(data))
    assert "training a byte-level BPE" not in r.stderr


def test_unwritable_run_dir_exits_4_before_preparing(small_data, tmp_path):
    run = _unwritable(tmp_path)
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    assert_one_line_error(run_cli("train", recipe, "--run-dir", run), 4, str(run))


def test_a_token_beyond_the_vocabulary_in_a_damaged_shard_exits_3(small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    shard = data / json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"][0]["file"]
    tokens = np.memmap(shard, dtype="<u2", mode="r+")
    edge = (1 << 16) // 2  # keep the first and last 64 KiB, which the quick check hashes
    tokens[edge:-edge] = 0xFFFF
    tokens.flush()
    del tokens
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data, **{"train.steps": 4}))
    assert_one_line_error(run_cli("train", recipe, "--run-dir", tmp_path / "run"), 3, shard.name, "65535",
                          "beyond the vocabulary")


def test_a_full_disk_while_logging_metrics_names_the_file(tmp_path):
    code = f"""
import resource
from pathlib import Path
from tstcli.errors import CheckpointError
from tstcli.run.metrics import MetricsWriter
w = MetricsWriter(Path({str(tmp_path)!r}))
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
try:
    for step in range(100):
        w.write({{"kind": "train", "step": step, "loss": 1.0}})
except CheckpointError as e:
    print(e.message)
w.close()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "metrics.jsonl" in r.stdout and "writing the metrics log" in r.stdout, r.stdout
