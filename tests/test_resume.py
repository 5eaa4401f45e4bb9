"""`tst resume` continues exactly: per-step losses and final weights bitwise equal to an uninterrupted run."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, small_recipe, write_recipe

SHARD = "shard-00001-model-00001-of-00001.safetensors"  # the one shard a single process writes


def assert_same_tensors(path_a, path_b):
    """Every tensor bitwise equal (the files' JSON headers may order their metadata differently)."""
    ta, tb = load_file(str(path_a)), load_file(str(path_b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def train_losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps)), "each step logged exactly once"
    return {r["step"]: r["loss"] for r in train}


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    # chunks of 48 of the 128 (phase 2) / 128 (phase 1) positions: the chunked loss path, several chunks a step
    recipe = write_recipe(tmp / "r.toml", small_recipe(small_data, **{"train.loss_chunk_size": 48}))
    run = tmp / "a"
    r = run_cli("train", recipe, "--run-dir", run, "--json")
    assert r.returncode == 0, r.stderr
    return recipe, run


@pytest.mark.slow
@pytest.mark.parametrize("stop_at,where", [(4, "phase 1"), (6, "exactly at the switch"), (8, "phase 2")])
def test_resume_is_bitwise_identical(uninterrupted, tmp_path, stop_at, where):
    _, a = uninterrupted
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for ckpt in (b / "checkpoints").iterdir():  # pretend the run died right after the checkpoint of `stop_at`
        if int(ckpt.name.split("-")[1]) > stop_at:
            shutil.rmtree(ckpt)
    if stop_at == 8:  # and that it died in the middle of the next save: half-written checkpoints must be ignored
        (b / "checkpoints" / ".tmp-step-00000010-999").mkdir()
        (b / "checkpoints" / ".tmp-step-00000010-999" / SHARD).write_bytes(b"partial")
        (b / "checkpoints" / "step-00000010").mkdir()
        (b / "checkpoints" / "step-00000010" / SHARD).write_bytes(b"partial")
    r = run_cli("resume", b)
    assert r.returncode == 0, r.stderr
    assert f"step-{stop_at:08d}" in r.stderr
    assert train_losses(b) == train_losses(a), f"resume in {where} changed the losses"
    final = "checkpoints/step-00000012/" + SHARD  # model and optimizer state
    assert_same_tensors(b / final, a / final), f"resume in {where} changed the final state"
    assert not list((b / "checkpoints").glob(".tmp-*"))


def test_resume_without_any_checkpoint_restarts_cleanly(uninterrupted, tmp_path):
    """A run killed before its first checkpoint resumes from the start, with no duplicate metric rows."""
    _, a = uninterrupted
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints")
    r = run_cli("resume", b)
    assert r.returncode == 0, r.stderr
    assert "from the start" in r.stderr
    assert train_losses(b) == train_losses(a)
    vals = [json.loads(l)["step"] for l in (b / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert vals == sorted(set(vals))
