"""Flat token shards and their manifest, the writing side: `ShardWriter` appends a split's tokens to shard files
(each with its sha256 and edge hash), `new_manifest` and `mix_layout` make the `manifest.json` that
`data/shards.py` reads.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from tstcli.data.shards import FORMAT_VERSION, edge_sha256


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
