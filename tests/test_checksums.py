"""Damaged checkpoints and exports are refused (exit 4 naming the file), never loaded in silence (issue #17)."""
import json
import shutil
import stat
import struct

import numpy as np
import pytest

from conftest import MOBY, run_cli
from test_cli_errors import assert_one_line_error
from tstcli.run import checkpoint, integrity

STEP = "step-00000012"  # the latest checkpoint of conftest's finished SMALL run: what every verb loads


@pytest.fixture(scope="module")
def finished(finished_run):
    return finished_run


@pytest.fixture(scope="module")
def exported(finished_export):
    return finished_export


def _tensor_bytes(path, name):
    """(offset, nbytes) of tensor `name`'s data in a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    start, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + start, end - start


def _set_first_value(path, name, value: float):
    off, _ = _tensor_bytes(path, name)
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(np.float32(value).tobytes())


def _flip_exponent_byte(path, name):
    off, _ = _tensor_bytes(path, name)
    with open(path, "r+b") as fh:
        fh.seek(off + 3)  # fp32 little-endian: byte 3 holds the sign and the exponent's high bits
        b = fh.read(1)[0]
        fh.seek(off + 3)
        fh.write(bytes([b ^ 0x40]))


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt = run / "checkpoints" / STEP
    return run, ckpt, ckpt / json.loads((ckpt / "state.json").read_text())["files"][0]


def test_state_json_records_every_file_sha256(finished):
    ckpt = finished / "checkpoints" / STEP
    state = json.loads((ckpt / "state.json").read_text())
    assert set(state["sha256"]) == set(state["files"]) and state["files"]
    assert state["sha256"] == integrity.checksums(ckpt, state["files"])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped exponent", "-3e35"])
def test_damaged_checkpoint_is_refused_by_every_verb(finished, tmp_path, damage):
    run, ckpt, weights = _copy(finished, tmp_path)
    name = "model.layers.0.attention.wq.weight"
    _flip_exponent_byte(weights, name) if damage == "flipped exponent" else _set_first_value(weights, name, -3e35)
    needles = (weights.name, "sha256", "damaged")
    for args in (("resume", run), ("eval", run), ("export", run, "--out", tmp_path / "hf"),
                 ("sample", run, "--prompt", "Call me", "--max-new-tokens", "2")):
        assert_one_line_error(run_cli(*args), 4, *needles)
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_non_finite_weights_are_refused_even_with_matching_checksums(finished, tmp_path):
    run, ckpt, weights = _copy(finished, tmp_path)
    _set_first_value(weights, "model.norm.weight", float("nan"))  # as if saved after a divergence
    state = json.loads((ckpt / "state.json").read_text())
    state["sha256"] = integrity.checksums(ckpt, state["files"])
    state["state_sha256"] = checkpoint._state_sha(state)  # state.json rewritten consistently: weights still checked
    (ckpt / "state.json").write_text(json.dumps(state))
    assert_one_line_error(run_cli("eval", run), 4, "norm.weight", "non-finite")
    assert_one_line_error(run_cli("resume", run), 4, "norm.weight", "non-finite")


def test_a_missing_checkpoint_file_is_refused_not_a_restart_from_step_0(finished, tmp_path):
    run, ckpt, weights = _copy(finished, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    weights.unlink()
    assert_one_line_error(run_cli("resume", run), 4, weights.name, "missing", "state.json")
    assert (run / "metrics.jsonl").read_text() == metrics  # the history is untouched


def test_state_json_naming_a_file_outside_the_checkpoint_is_refused(finished, tmp_path):
    run, ckpt, weights = _copy(finished, tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(weights, outside)
    state = json.loads((ckpt / "state.json").read_text())
    state["files"] = [f"../../../{outside.name}"]
    (ckpt / "state.json").write_text(json.dumps(state))
    assert_one_line_error(run_cli("eval", run), 4, "state.json", "damaged")  # its own checksum no longer holds
    state["state_sha256"] = checkpoint._state_sha(state)  # a consistent forgery: the name itself is refused
    (ckpt / "state.json").write_text(json.dumps(state))
    assert_one_line_error(run_cli("eval", run), 4, "state.json", "elsewhere.safetensors", "own folder")


@pytest.mark.slow
def test_export_records_checksums_and_a_damaged_export_is_refused(exported, tmp_path):
    meta = json.loads((exported / "tst_export.json").read_text())
    assert meta["sha256"] == integrity.checksums(exported, ["model.safetensors"])
    for f in exported.iterdir():  # ordinary file modes (safetensors' temporary file was 0600)
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f
    copy = tmp_path / "hf"
    shutil.copytree(exported, copy)
    _flip_exponent_byte(copy / "model.safetensors", "model.norm.weight")
    assert_one_line_error(run_cli("eval", copy, "--corpus", MOBY), 4, "model.safetensors", "sha256")
    assert_one_line_error(run_cli("sample", copy, "--prompt", "Call me"), 4, "model.safetensors", "sha256")


@pytest.mark.parametrize("where", ["run", "inside", "parent"])
@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_over_its_run(finished, tmp_path, where, force):
    run, _, _ = _copy(finished, tmp_path)
    out = {"run": run, "inside": run / "hf", "parent": tmp_path}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_cli("export", run, "--out", out, *(["--force"] if force else []))
    assert_one_line_error(r, 2, "--out", "run directory")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
