"""Tokens users already have (nanoGPT's train.bin / val.bin) train without re-tokenizing (issue #15)."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from test_formats import _moby_docs
from tstcli.data import shards
from tstcli.data.encode import _is_val
from tstcli.data.prepare import prepare


def _nanogpt_pair(tok_path, where, val_fraction=0.05):
    """train.bin / val.bin as nanoGPT's prepare.py writes them: uint16 ids, each document followed by the
    end-of-text token, documents split as `tst prepare` splits them."""
    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    ids = {"train": [], "val": []}
    for doc in _moby_docs():
        ids["val" if _is_val(doc, val_fraction) else "train"] += tok.encode(doc, add_special_tokens=False).ids + [eot]
    for split in ids:
        np.array(ids[split], dtype=np.uint16).tofile(where / f"{split}.bin")
    return where / "train.bin", where / "val.bin"


def _first_loss(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return next(x["loss"] for x in rows if x["kind"] == "train" and x["step"] == 1)


def test_nanogpt_bins_train_like_the_same_text_prepared(small_data, tmp_path):
    train_bin, val_bin = _nanogpt_pair(small_data / "tokenizer.json", tmp_path)
    tok = str(small_data / "tokenizer.json")
    text = write_recipe(tmp_path / "text.toml", small_recipe(tmp_path / "text-data", **{
        "train.steps": 2, "data.tokenizer": tok}))
    bins = write_recipe(tmp_path / "bins.toml", small_recipe(tmp_path / "bin-data", **{
        "train.steps": 2, "data.tokenizer": tok, "data.token_files": [str(train_bin)],
        "data.token_val_files": [str(val_bin)]}))
    for recipe, run in ((text, "text-run"), (bins, "bin-run")):
        r = run_cli("train", recipe, "--run-dir", tmp_path / run)
        assert r.returncode == 0, r.stderr
    a, b = (shards.read_manifest(tmp_path / d) for d in ("text-data", "bin-data"))
    assert a["splits"] == b["splits"]  # the same shards (sha256 each) and document counts
    assert b["inputs"]["token_files"][0]["origin"] == str(train_bin)
    assert _first_loss(tmp_path / "text-run") == _first_loss(tmp_path / "bin-run")


def test_a_val_fraction_cuts_at_a_document_end(small_data, tmp_path):
    train_bin, _ = _nanogpt_pair(small_data / "tokenizer.json", tmp_path)
    cfg = small_recipe(tmp_path / "d", **{"data.tokenizer": str(small_data / "tokenizer.json"),
                                          "data.token_files": [str(train_bin)], "data.val_fraction": 0.1}).data
    m = prepare(cfg, tmp_path / "d", log=lambda *_: None).manifest
    total = train_bin.stat().st_size // 2
    tr, va = m["splits"]["train"]["tokens"], m["splits"]["val"]["tokens"]
    assert tr + va == total and 0.09 * total < va <= 0.1 * total
    eot = m["tokenizer"]["eot_id"]
    train_tokens = np.fromfile(tmp_path / "d" / m["splits"]["train"]["shards"][-1]["file"], dtype=m["dtype"])
    assert train_tokens[-1] == eot  # the cut is just after a document's end-of-text token


@pytest.mark.parametrize("damage,needles", [
    ("odd size", ["train.bin", "whole number of uint16 tokens", "data.token_dtype"]),
    ("beyond vocab", ["train.bin", "token id 40000", "vocabulary (512)"]),
    ("bpe", ["data.tokenizer", "not 'bpe'"]),
])
def test_bad_token_files_exit_with_one_line(small_data, tmp_path, damage, needles):
    train_bin, val_bin = _nanogpt_pair(small_data / "tokenizer.json", tmp_path)
    raw = bytearray(train_bin.read_bytes())
    if damage == "odd size":
        raw += b"\x01"
    elif damage == "beyond vocab":
        raw[1000:1002] = np.array([40000], dtype="<u2").tobytes()
    train_bin.write_bytes(bytes(raw))
    tokenizer = "bpe" if damage == "bpe" else str(small_data / "tokenizer.json")
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(tmp_path / "d", **{"data.tokenizer": tokenizer}))
    sets = ["--set", f'data.token_files=["{train_bin}"]', "--set", f'data.token_val_files=["{val_bin}"]']
    r = run_cli("prepare", recipe, *sets)
    assert_one_line_error(r, 2 if damage == "bpe" else 3, *needles)
    assert not (tmp_path / "d" / "manifest.json").exists() and not (tmp_path / "d" / ".prepare-tmp").exists()
