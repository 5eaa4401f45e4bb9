"""`model.init_from`: a run starts from an export's (or run's) weights, or refuses with one line."""
import json
import shutil

import pytest
import torch

from conftest import run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from tstcli.objective import next_token_loss
from tstcli.run import metrics
from tstcli.run.load import load_model
from tstcli.data.opener import open_data


@pytest.fixture(scope="module")
def exported(finished_run, finished_export):
    return finished_run, finished_export  # only read: a run and its export to start from


@pytest.mark.slow
def test_a_run_starts_from_an_export_with_its_held_out_loss(exported, small_data, tmp_path):
    """Step 0's held-out loss of the new run is the export's loss on the same rows (fp32: <= 1e-5), and the run
    directory records where it started (sha256 of the weights)."""
    _, export = exported
    r = small_recipe(small_data, **{"model.init_from": str(export), "tst.ratio": 0.0})
    recipe = write_recipe(tmp_path / "r.toml", r)
    out = run_cli("train", recipe, "--run-dir", tmp_path / "b", "--set", "train.steps=2")
    assert out.returncode == 0, out.stderr
    assert f"init: from {export}" in out.stderr
    val0 = next(x for x in metrics.read_rows(tmp_path / "b", "val") if x["step"] == 0)["val_loss"]
    data, _ = open_data(r, small_data)
    rows = torch.from_numpy(data.heldout_batch(r))
    expected = next_token_loss(load_model(export).model, rows, r.train.rows_per_micro_batch(1)).val_loss
    assert abs(val0 - expected) <= 1e-5, (val0, expected)
    record = json.loads((tmp_path / "b" / "init_from.json").read_text())
    assert record["source"] == str(export) and record["revision"] is None
    assert set(record["sha256"]) == {"model.safetensors"} and len(record["sha256"]["model.safetensors"]) == 64
    fresh = run_cli("train", write_recipe(tmp_path / "c.toml", small_recipe(small_data)), "--run-dir",
                    tmp_path / "c", "--set", "train.steps=2")
    assert fresh.returncode == 0
    assert next(x for x in metrics.read_rows(tmp_path / "c", "val") if x["step"] == 0)["val_loss"] > val0 + 0.1


def test_a_run_directory_is_a_checkpoint_too(exported, small_data, tmp_path):
    run, _ = exported
    r = small_recipe(small_data, **{"model.init_from": str(run)})
    out = run_cli("train", write_recipe(tmp_path / "r.toml", r), "--run-dir", tmp_path / "b", "--set",
                  "train.steps=2")
    assert out.returncode == 0, out.stderr
    assert "step-00000012" in json.loads((tmp_path / "b" / "init_from.json").read_text())["checkpoint"]


def test_a_different_shape_is_one_line_exit_2(exported, small_data, tmp_path):
    _, export = exported
    r = small_recipe(small_data, **{"model.init_from": str(export), "model.dim": 48, "model.n_heads": 4})
    out = run_cli("train", write_recipe(tmp_path / "r.toml", r), "--run-dir", tmp_path / "b")
    assert_one_line_error(out, 2, "model.dim is 48 in the recipe but 32 in the checkpoint")
    assert not (tmp_path / "b").exists()


def test_a_different_tokenizer_is_one_line_exit_3(exported, small_data, tmp_path):
    _, export = exported
    other = tmp_path / "other"
    shutil.copytree(export, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, different ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    r = small_recipe(small_data, **{"model.init_from": str(other)})
    out = run_cli("train", write_recipe(tmp_path / "r.toml", r), "--run-dir", tmp_path / "b")
    assert_one_line_error(out, 3, "tokenizer", "data.tokenizer")


def test_a_hub_id_offline_and_not_cached_is_one_line_exit_3(small_data, tmp_path):
    r = small_recipe(small_data, **{"model.init_from": "nobody-here/no-such-model"})
    out = run_cli("train", write_recipe(tmp_path / "r.toml", r), "--run-dir", tmp_path / "b",
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(out, 3, "nobody-here/no-such-model", "offline")
    assert not (tmp_path / "b").exists()


def test_a_sharded_checkpoint_loads_whole_and_is_recorded_file_by_file(exported, small_data, tmp_path, monkeypatch):
    """A Hugging Face checkpoint in several safetensors files (with its index) gives the same weights as the run it
    came from, and each file's sha256 is recorded."""
    from tstcli.export import writer
    from tstcli.run import init_from
    from tstcli.run.load import from_run
    run, _ = exported
    monkeypatch.setattr(writer, "MAX_SHARD", "20KB")
    res = writer.export(run, None, tmp_path / "sharded", "fp32", False)
    shards = [f for f in res["files"] if f.startswith("model-")]
    assert len(shards) > 2
    full, _ = init_from.weights(str(tmp_path / "sharded"))
    ours = from_run(run, None).model.state_dict()
    assert full.keys() == ours.keys() and all(torch.equal(full[k], ours[k]) for k in ours)
    r = small_recipe(small_data)
    record = init_from.check(str(tmp_path / "sharded"), r.model, 512, small_data / "tokenizer.json")
    assert sorted(record["sha256"]) == sorted(shards)
