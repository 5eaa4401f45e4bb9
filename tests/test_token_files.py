"""Tokens users already have (nanoGPT's train.bin / val.bin, datatrove's .ds + .ds.index) train without
re-tokenizing (issue #15)."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from test_formats import _moby_docs
from tstcli.data import shards
from tstcli.prep import token_files
from tstcli.prep.encode import _is_val
from tstcli.prep.prepare import prepare


def _split_docs(tok_path, val_fraction=0.05):
    """({split: [token ids of each document]}, end-of-text id), documents split as `tst prepare` splits them."""
    tok = Tokenizer.from_file(str(tok_path))
    docs = {"train": [], "val": []}
    for doc in _moby_docs():
        docs["val" if _is_val(doc, val_fraction) else "train"].append(tok.encode(doc, add_special_tokens=False).ids)
    return docs, tok.token_to_id("<|endoftext|>")


def _nanogpt_pair(tok_path, where, val_fraction=0.05):
    """train.bin / val.bin as nanoGPT's prepare.py writes them: uint16 ids, each document followed by the
    end-of-text token, documents split as `tst prepare` splits them."""
    docs, eot = _split_docs(tok_path, val_fraction)
    for split in docs:
        np.array([t for d in docs[split] for t in d + [eot]], dtype=np.uint16).tofile(where / f"{split}.bin")
    return where / "train.bin", where / "val.bin"


def _datatrove_pair(tok_path, where, eos="none"):
    """train.ds / val.ds with their .ds.index as datatrove's DocumentTokenizer writes them (TokenizedFile:
    little-endian uint16 ids, concatenated; the index the documents' cumulative ends as little-endian uint64). An
    end-of-text token ends each document only with `eos_token`: eos "all", "none", or "some" (every other document,
    plus an empty document: a repeated end)."""
    docs, eot = _split_docs(tok_path)
    for split in docs:
        ids, ends = [], []
        for i, d in enumerate(docs[split]):
            ids += d + [eot] if eos == "all" or (eos == "some" and i % 2) else d
            ends += [len(ids)] * (2 if eos == "some" and i == 3 else 1)
        np.array(ids, dtype="<u2").tofile(where / f"{split}.ds")
        np.array(ends, dtype="<u8").tofile(where / f"{split}.ds.index")
    return where / "train.ds", where / "val.ds"


def _first_loss(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return next(x["loss"] for x in rows if x["kind"] == "train" and x["step"] == 1)


@pytest.mark.slow
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
    unnamed = lambda m: {s: {**m["splits"][s], "shards": [{k: v for k, v in x.items() if k != "file"}  # noqa: E731
                                                         for x in m["splits"][s]["shards"]]} for s in m["splits"]}
    assert unnamed(a) == unnamed(b)  # the same shards (sha256 each) and document counts; names differ by source
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
    assert not (tmp_path / "d" / "manifest.json").exists() and not (tmp_path / "d" / ".prepare-work").exists()


def _prepare_cli(tmp_path, name, train, val=None, **overrides):
    """`tst prepare` (the real CLI) of token files into tmp_path/name; the manifest."""
    recipe = write_recipe(tmp_path / f"{name}.toml", small_recipe(tmp_path / name, **{
        "data.token_files": [str(train)], **({"data.token_val_files": [str(val)]} if val else {}), **overrides}))
    r = run_cli("prepare", recipe)
    assert r.returncode == 0, r.stderr
    return shards.read_manifest(tmp_path / name)


@pytest.mark.parametrize("eos", ["none", "all", "some", "all, no index"])
def test_datatrove_ds_prepares_like_the_nanogpt_bins(small_data, tmp_path, eos):
    tok = small_data / "tokenizer.json"
    (tmp_path / "bins").mkdir(), (tmp_path / "ds").mkdir()
    bins = _prepare_cli(tmp_path, "bin-data", *_nanogpt_pair(tok, tmp_path / "bins"), **{"data.tokenizer": str(tok)})
    train_ds, val_ds = _datatrove_pair(tok, tmp_path / "ds", eos.split(",")[0])
    if eos.endswith("no index"):  # read as a flat file: its end-of-text tokens separate the documents
        for f in (train_ds, val_ds):
            f.with_name(f.name + ".index").unlink()
    ds = _prepare_cli(tmp_path, "ds-data", train_ds, val_ds, **{"data.tokenizer": str(tok)})
    assert ds["splits"] == bins["splits"]  # the same shards (sha256 each): one end-of-text token per document


def test_datatrove_ds_read_in_small_chunks_and_cut_at_a_document_end(small_data, tmp_path, monkeypatch):
    tok = small_data / "tokenizer.json"
    train_ds, val_ds = _datatrove_pair(tok, tmp_path, "some")
    whole = small_recipe(tmp_path / "whole", **{"data.tokenizer": str(tok), "data.token_files": [str(train_ds)],
                                                 "data.token_val_files": [str(val_ds)]}).data
    split = small_recipe(tmp_path / "cut", **{"data.tokenizer": str(tok), "data.token_files": [str(train_ds)],
                                               "data.val_fraction": 0.1}).data
    expected = prepare(whole, tmp_path / "whole", log=lambda *_: None).manifest
    monkeypatch.setattr(token_files, "CHUNK", 997)  # documents and inserted separators straddle the chunks
    assert prepare(whole, tmp_path / "chunked", log=lambda *_: None).manifest["splits"] == expected["splits"]
    m = prepare(split, tmp_path / "cut", log=lambda *_: None).manifest
    ends = np.fromfile(train_ds.with_name("train.ds.index"), dtype="<u8")
    n_docs, read = len(np.unique(ends)), int(ends[-1])
    tr, va = m["splits"]["train"], m["splits"]["val"]
    assert tr["documents"] + va["documents"] == n_docs  # from the index: the empty document adds none
    assert read < tr["tokens"] + va["tokens"] <= read + n_docs and 0.09 * read < va["tokens"] <= 0.11 * read
    eot = m["tokenizer"]["eot_id"]
    train_tokens = np.fromfile(tmp_path / "cut" / tr["shards"][-1]["file"], dtype=m["dtype"])
    assert train_tokens[-1] == eot and int((train_tokens[-2:] == eot).sum()) == 1


@pytest.mark.parametrize("damage,needles", [
    ("odd size", ["train.ds.index", "whole number of uint64"]),
    ("last end", ["train.ds.index", "last document ends", "train.ds holds"]),
    ("decreasing", ["train.ds.index", "before the one preceding it"]),
])
def test_a_bad_datatrove_index_exits_with_one_line(small_data, tmp_path, damage, needles):
    train_ds, val_ds = _datatrove_pair(small_data / "tokenizer.json", tmp_path)
    index = train_ds.with_name("train.ds.index")
    ends = np.fromfile(index, dtype="<u8")
    if damage == "odd size":
        index.write_bytes(ends.tobytes() + b"\x00\x00\x00")
    else:
        if damage == "last end":
            ends = ends[:-1]
        else:
            ends[5], ends[6] = ends[6], ends[5]
        ends.astype("<u8").tofile(index)
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(tmp_path / "d", **{
        "data.tokenizer": str(small_data / "tokenizer.json"), "data.token_files": [str(train_ds)],
        "data.token_val_files": [str(val_ds)]}))
    assert_one_line_error(run_cli("prepare", recipe), 3, *needles)
    assert not (tmp_path / "d" / "manifest.json").exists() and not (tmp_path / "d" / ".prepare-work").exists()
