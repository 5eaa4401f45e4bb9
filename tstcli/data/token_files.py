"""Tokens users already have: flat files of token ids (nanoGPT's `train.bin` / `val.bin`: raw little-endian uint16
or uint32, documents separated by the end-of-text token) become a preparation's shards without re-tokenizing.

The validation split is either explicit (`data.token_val_files`) or the last `data.val_fraction` of the training
files' tokens, cut just after an end-of-text token so no document is split. Files are read in chunks of
`CHUNK` tokens (memory bounded), checked (size a whole number of tokens, every id within the tokenizer's
vocabulary) and re-written as shards with sha256 like those `tst prepare` tokenizes itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from tstcli.data import shards
from tstcli.data.tokenizer import eot_id, load_tokenizer, tokenizer_sha256
from tstcli.errors import DataError
from tstcli.recipe import DataConfig

CHUNK = 1 << 24  # tokens per read


def files(paths: list[str], key: str) -> list[dict]:
    """[{origin, path, fingerprint, bytes}] of local token files (size + mtime decide whether prepare is stale)."""
    out = []
    for origin in paths:
        p = Path(origin).expanduser()
        if not p.is_file():
            raise DataError(f"{key}: {origin}: no such file")
        st = p.stat()
        out.append({"origin": origin, "path": str(p), "fingerprint": f"{st.st_size}:{st.st_mtime_ns}",
                    "bytes": st.st_size})
    return out


def _tokens(f: dict, dtype: np.dtype, vocab: int, key: str) -> Iterator[np.ndarray]:
    if f["bytes"] % dtype.itemsize:
        raise DataError(f"{f['origin']}: {f['bytes']} bytes is not a whole number of {dtype.name} tokens "
                        f"({key}; data.token_dtype = {dtype.name!r})")
    if f["bytes"] == 0:
        return
    mm = np.memmap(f["path"], dtype=dtype, mode="r")
    for start in range(0, len(mm), CHUNK):
        part = np.asarray(mm[start:start + CHUNK])
        if part.max() >= vocab:
            i = int(np.argmax(part >= vocab))
            raise DataError(f"{f['origin']}: token id {int(part[i])} at token {start + i:,} is beyond the vocabulary "
                            f"({vocab}) of data.tokenizer; wrong data.token_dtype or tokenizer?")
        yield part


def write(cfg: DataConfig, train: list[dict], val: list[dict], vocab: int, eot: int, writers: dict) -> dict:
    """Stream the files into the split writers; returns documents per split (end-of-text tokens, plus a last
    document without one)."""
    dtype = np.dtype(cfg.token_dtype).newbyteorder("<")
    docs = {"train": 0, "val": 0}
    ends_open = {"train": False, "val": False}

    def put(split: str, part: np.ndarray) -> None:
        if len(part):
            writers[split].write(part)
            docs[split] += int(np.count_nonzero(part == eot))
            ends_open[split] = bool(part[-1] != eot)

    if val:
        for f in train:
            for part in _tokens(f, dtype, vocab, "data.token_files"):
                put("train", part)
        for f in val:
            for part in _tokens(f, dtype, vocab, "data.token_val_files"):
                put("val", part)
    else:  # the last val_fraction of the tokens, from the first document boundary on
        total = sum(f["bytes"] // dtype.itemsize for f in train)
        cut, seen, split = int(total * (1 - cfg.val_fraction)), 0, "train"
        for f in train:
            for part in _tokens(f, dtype, vocab, "data.token_files"):
                if split == "train" and seen + len(part) > cut:
                    ends = np.flatnonzero(part[max(0, cut - seen):] == eot)
                    if len(ends):
                        at = max(0, cut - seen) + int(ends[0]) + 1
                        put("train", part[:at])
                        part, split = part[at:], "val"
                put(split, part)
                seen += len(part) if split == "train" else 0
        if split == "train":
            raise DataError(f"data.token_files: no end-of-text token (id {eot}) in the last {cfg.val_fraction:.0%} of "
                            "the tokens to start a validation split at: pass data.token_val_files")
    return {s: docs[s] + int(ends_open[s]) for s in docs}


def register(cfg: DataConfig, train: list[dict], val: list[dict], tmp: Path, inputs: dict) -> dict:
    """data.token_files re-written as shards (checked, hashed) into `tmp`; returns the manifest."""
    tok = load_tokenizer(cfg.tokenizer)
    eot = eot_id(tok, cfg.eot_token, "data.eot_token")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = shards.token_dtype(vocab)
    writers = {s: shards.ShardWriter(tmp, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    docs = write(cfg, train, val, vocab, eot, writers)
    split_shards = {s: w.finish() for s, w in writers.items()}
    for split, key in (("train", "data.token_files"), ("val", "data.token_val_files")):
        if not sum(x["tokens"] for x in split_shards[split]):
            raise DataError(f"{key}: no {split} tokens")
    tok.save(str(tmp / "tokenizer.json"))
    return shards.new_manifest(cfg, inputs, [{"origin": f["origin"], "path": f["path"], "bytes": f["bytes"],
                                              "split": split} for split, fs in (("train", train), ("val", val))
                                             for f in fs], tokenizer_sha256(tok), eot, vocab, 0, docs, split_shards)
