"""Flat token shards on disk and their manifest, the reading side (docs/design.md, "Data"): the manifest read
and verified, the shards memory-mapped (`TokenStore`). `tst prepare` writes them (`prep/shard_writer.py`).

A split (train, val) is a list of shard files of raw little-endian token ids (uint16 when the vocabulary fits,
else uint32), documents separated by the end-of-text token. `manifest.json` records tokenizer hash, vocab size,
dtype, per-shard token counts and sha256, and where the data came from.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tstcli.errors import DataError
from tstcli.files import file_sha256

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
