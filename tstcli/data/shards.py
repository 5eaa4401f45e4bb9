"""Flat token shards on disk and their manifest (docs/design.md, "Data").

A split (train, val) is a list of shard files of raw little-endian token ids (uint16 when the vocabulary fits,
else uint32), documents separated by the end-of-text token. `manifest.json` records tokenizer hash, vocab size,
dtype, per-shard token counts and sha256, and where the data came from.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tstcli.errors import DataError
from tstcli.files import file_sha256

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class ShardWriter:
    """Appends token arrays to `<split>-NNNNN.bin` files, rolling over every `shard_tokens` tokens (`split` may carry
    a mixture entry's name: `train-dclm`)."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.dir, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._fh = None
        self._hash = None
        self._count = 0

    def _open(self):
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._fh = open(self.dir / name, "wb")
        self._hash = hashlib.sha256()
        self._count = 0
        self.shards.append({"file": name})

    def _close(self):
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self.shards[-1].update(tokens=self._count, sha256=self._hash.hexdigest(),
                               edge_sha256=edge_sha256(self.dir / self.shards[-1]["file"]))
        self._fh = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._fh is None:
                self._open()
            room = self.shard_tokens - self._count
            part, tokens = tokens[:room], tokens[room:]
            data = part.tobytes()
            self._fh.write(data)
            self._hash.update(data)
            self._count += len(part)
            if self._count == self.shard_tokens:
                self._close()

    def finish(self) -> list[dict]:
        if self._fh is not None:
            self._close()
        return self.shards


def new_manifest(cfg, inputs: dict, sources: list[dict], tokenizer_sha: str, eot: int, vocab: int, chars: int,
                 docs: dict, split_shards: dict) -> dict:
    """The manifest of a preparation (cfg: the recipe's DataConfig)."""
    return {
        "format": FORMAT_VERSION,
        "inputs": inputs,
        "sources": sources,
        "tokenizer": {"file": "tokenizer.json", "sha256": tokenizer_sha, "spec": cfg.tokenizer,
                      "eot_token": cfg.eot_token, "eot_id": eot},
        "vocab_size": vocab,
        "dtype": token_dtype(vocab).str,
        "characters": chars,
        "splits": {s: {"documents": docs[s], "tokens": sum(x["tokens"] for x in split_shards[s]),
                       "shards": split_shards[s]} for s in ("train", "val")},
    }


def mix_layout(entries: list[tuple[str, dict, dict]]) -> list[dict]:
    """Where each mixture entry's shards sit in the splits' shard lists: [(name, {split: shards}, {split: documents})]
    -> [{name, train: {first, count, tokens, documents}, val: {...}}] (entries' shards are listed in entry order)."""
    out, first = [], {"train": 0, "val": 0}
    for name, split_shards, docs in entries:
        row = {"name": name}
        for s in ("train", "val"):
            row[s] = {"first": first[s], "count": len(split_shards[s]), "documents": docs[s],
                      "tokens": sum(x["tokens"] for x in split_shards[s])}
            first[s] += len(split_shards[s])
        out.append(row)
    return out


def read_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest (run `tst prepare RECIPE` first)")
    try:
        m = json.loads(path.read_text())
        m["splits"]["train"]["shards"], m["splits"]["val"]["shards"], m["dtype"], m["vocab_size"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: corrupt manifest (expected the JSON written by `tst prepare`)") from None
    return m


def manifest_sha256(data_dir: Path) -> str:
    return file_sha256(Path(data_dir) / MANIFEST)


EDGE_BYTES = 1 << 16


def edge_sha256(path: Path) -> str:
    """sha256 of a shard's first and last 64 KiB: a check cheap enough for every start."""
    with open(path, "rb") as fh:
        head = fh.read(EDGE_BYTES)
        fh.seek(max(0, path.stat().st_size - EDGE_BYTES))
        return hashlib.sha256(head + fh.read(EDGE_BYTES)).hexdigest()


def verify(data_dir: Path, manifest: dict, full: bool) -> None:
    """Every shard must exist with the size and edge hash the manifest gives; with `full`, its sha256 too."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            path = Path(data_dir) / shard["file"]
            if not path.is_file():
                raise DataError(f"{path}: shard listed in {MANIFEST} is missing (re-run `tst prepare --force`)")
            if path.stat().st_size != shard["tokens"] * itemsize:
                raise DataError(f"{path}: size {path.stat().st_size} bytes, manifest expects "
                                f"{shard['tokens'] * itemsize} (corrupt shard; re-run `tst prepare --force`)")
            if "edge_sha256" in shard and edge_sha256(path) != shard["edge_sha256"]:
                raise DataError(f"{path}: content differs from {MANIFEST} (corrupt shard; re-run `tst prepare --force`)")
            if full and file_sha256(path) != shard["sha256"]:
                raise DataError(f"{path}: sha256 differs from {MANIFEST} (corrupt shard; re-run `tst prepare --force`)")


class TokenStore:
    """Read-only memory maps of one split's shards, addressed by a global token offset."""

    def __init__(self, data_dir: Path, manifest: dict, split: str):
        dtype = np.dtype(manifest["dtype"])
        shards = manifest["splits"][split]["shards"]
        self.maps = [np.memmap(Path(data_dir) / s["file"], dtype=dtype, mode="r") if s["tokens"] else
                     np.zeros(0, dtype) for s in shards]
        self.lengths = np.array([s["tokens"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.paths = [Path(data_dir) / s["file"] for s in shards]
        self.vocab_size = int(manifest["vocab_size"])

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def rows(self, offsets: np.ndarray, width: int) -> np.ndarray:
        """Rows of `width` tokens starting at global `offsets`; a row never crosses a shard boundary."""
        out = np.empty((len(offsets), width), dtype=np.int64)
        shard_ids = np.searchsorted(self.starts, offsets, side="right") - 1
        for i, (off, sid) in enumerate(zip(offsets, shard_ids)):
            local = int(off - self.starts[sid])
            out[i] = self.maps[sid][local:local + width]
        if out.size and out.max() >= self.vocab_size:  # a damaged shard: the embedding would index past V
            i = int(np.argmax(out.max(axis=1) >= self.vocab_size))
            sid, bad = int(shard_ids[i]), int(out[i].max())
            raise DataError(f"{self.paths[sid]}: token id {bad} near token {int(offsets[i] - self.starts[sid])} is "
                            f"beyond the vocabulary ({self.vocab_size}); the shard is damaged (re-run `tst prepare "
                            "--force`)")
        return out
