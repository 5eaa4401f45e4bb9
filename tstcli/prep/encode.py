"""Tokenizing a corpus into shards (the work of `tst prepare` for text sources).

Pass 1 (only for a trained tokenizer) streams the training documents into the BPE trainer. Pass 2 streams every
document, sends it to the validation or training split by a hash of its text (a split by document, stable under
reordering of sources), tokenizes in batches and appends to the shard writers, one work unit (`units.py`) at a
time. Memory is bounded by one batch and one piece of a document. A mixture's entries share the tokenizer.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from tstcli.errors import DataError
from tstcli.files import file_sha256
from tstcli.prep import readers, shard_writer, sources
from tstcli.prep.tokenizer import eot_id, load_tokenizer, train_bpe
from tstcli.prep.units import Unit
from tstcli.recipe import DataConfig

Groups = list[tuple[str | None, list[sources.SourceFile]]]  # (mixture entry name or None, its files)

BATCH_CHARS = 4_000_000  # characters per encode_batch call: large enough to use every core, small enough to stream
# A document longer than this is tokenized in pieces of at most this many characters, cut where a run of whitespace
# begins (so the pre-tokenizer sees the same words): memory stays bounded however long one document is.
PIECE_CHARS = 250_000


def _is_val(text: str, val_fraction: float) -> bool:
    h = hashlib.sha1()
    for start in range(0, len(text), PIECE_CHARS):  # piecewise: the same digest without a copy of a huge text
        h.update(text[start:start + PIECE_CHARS].encode("utf-8", "replace"))
    return int.from_bytes(h.digest()[:8], "little") / 2.0 ** 64 < val_fraction


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of at most `size` characters, each cut (where possible) where a run of whitespace
    begins, so tokenizing the pieces gives the tokens of the whole text."""
    start = 0
    while len(text) - start > size:
        end = start + size
        cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
        while cut > start + 1 and text[cut - 1].isspace():
            cut -= 1
        cut = cut if cut > start else end  # no whitespace in the window: a hard cut
        yield text[start:cut]
        start = cut
    yield text[start:]


def _documents(files, cfg: DataConfig, split: str, scratch: Path) -> Iterator[str]:
    for f in files:
        with sources.local_copy(f, scratch) as path:
            for doc in readers.documents(path, f.origin, cfg.text_field, cfg.txt_documents):
                if (split == "val") == _is_val(doc, cfg.val_fraction):
                    yield from pieces(doc)


def _encode(tok, docs: list[str]) -> list[list[int]]:
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(docs, add_special_tokens=False)]


def make_tokenizer(cfg: DataConfig, files: list[sources.SourceFile], scratch: Path, log):
    """Pass 1: a byte-level BPE trained on (a sample of) the training documents of every file, or the loaded one.
    Returns (tokenizer, eot id, vocabulary size)."""
    if cfg.tokenizer == "bpe":
        sample = f"a sample of up to {cfg.tokenizer_train_chars:,} characters of " if cfg.tokenizer_train_chars else ""
        log(f"prepare: training a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on {sample}the training documents")
        tok = train_bpe(_documents(files, cfg, "train", scratch), cfg.vocab_size, cfg.eot_token, sys.stderr.isatty(),
                        cfg.tokenizer_train_chars)
    else:
        tok = load_tokenizer(cfg.tokenizer)
    return tok, eot_id(tok, cfg.eot_token, "data.eot_token"), tok.get_vocab_size(with_added_tokens=True)


def tokenize_unit(cfg: DataConfig, unit: Unit, tok, eot: int, dtype, work: Path, bar=None) -> dict:
    """Pass 2 over one unit into shards of its own in `work`; returns the unit's record: its shards, documents and
    characters per split, and the bytes that were not valid UTF-8."""
    writers = {s: shard_writer.ShardWriter(work, s + unit.prefix, dtype, cfg.shard_tokens) for s in ("train", "val")}
    docs_per_split = {"train": 0, "val": 0}
    chars = 0
    eot_arr = np.array([eot], dtype=np.int64)
    # Per split: pieces waiting to be encoded, each with whether it ends its document (then an end-of-text follows).
    batches: dict[str, list[tuple[str, bool]]] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}

    def encode_and_write(split: str) -> None:
        batch = batches[split]
        parts = []
        for ids, (_, ends) in zip(_encode(tok, [text for text, _ in batch]), batch):
            parts.append(np.asarray(ids, dtype=np.int64))
            if ends:
                parts.append(eot_arr)
                docs_per_split[split] += 1
        writers[split].write(np.concatenate(parts))
        batches[split], sizes[split] = [], 0

    decode = readers.DecodeStats()
    for f in unit.files:
        with sources.local_copy(f, work / "download") as path:
            for doc in readers.documents(path, f.origin, cfg.text_field, cfg.txt_documents, decode, unit.row_groups):
                split = "val" if _is_val(doc, cfg.val_fraction) else "train"
                chars += len(doc)
                rest = pieces(doc)
                piece = next(rest)
                while piece is not None:
                    following = next(rest, None)
                    batches[split].append((piece, following is None))
                    sizes[split] += len(piece)
                    if sizes[split] >= BATCH_CHARS:
                        encode_and_write(split)
                    piece = following
    for split in ("train", "val"):
        if batches[split]:
            encode_and_write(split)
    if bar is not None:
        bar.update(1)
    # Each local source's content hash (the unit holding a Parquet file's first row groups hashes it): a later
    # prepare that finds only its mtime changed (`touch`, a copy) compares contents instead of rebuilding.
    hashed = {f.origin: file_sha256(Path(f.path)) for f in unit.files
              if f.local and (unit.row_groups is None or unit.row_groups[0] == 0)}
    return {"unit": unit.name, "entry": unit.entry, "identity": unit.identity,
            "shards": {s: w.finish() for s, w in writers.items()}, "documents": docs_per_split,
            "characters": chars, "not_utf8_bytes": decode.by_file, "source_sha256": hashed}


def manifest_of(cfg: DataConfig, inputs: dict, groups: Groups, units: list[Unit], records: list[dict], tok_sha: str,
                eot: int, vocab: int) -> dict:
    """The manifest of finished units (their records in unit order), after the checks every preparation makes."""
    names = [name for name, _ in groups]
    for i, name in enumerate(names):
        if name is not None and not sum(r["documents"]["train"] for r in records if r["entry"] == name):
            raise DataError(f"data.mix[{i}].sources: entry {name!r} has no training documents (empty, or every "
                            "document fell in the validation split)")
    docs = {s: sum(r["documents"][s] for r in records) for s in ("train", "val")}
    if docs["train"] + docs["val"] == 0:
        raise DataError(f"data.sources: {', '.join(cfg.sources)} hold no documents (every file is empty)")
    key = "data.mix[].sources" if cfg.mix else "data.sources"
    for split in ("train", "val"):
        if docs[split] == 0:
            what = "no document fell in the validation split: raise data.val_fraction or add documents" \
                if split == "val" else "no training documents: lower data.val_fraction or add documents"
            raise DataError(f"{key}: {what}")
    files = list({f.origin: f for u in units for f in u.files}.values())
    manifest = shard_writer.new_manifest(cfg, inputs, [{"origin": f.origin, "path": f.path or f.origin, "bytes": f.size}
                                                 for f in files],
                                   tok_sha, eot, vocab, sum(r["characters"] for r in records), docs,
                                   {s: [x for r in records for x in r["shards"][s]] for s in ("train", "val")})
    manifest["source_sha256"] = {k: v for r in records for k, v in r.get("source_sha256", {}).items()}
    if cfg.mix:
        manifest["mix"] = shard_writer.mix_layout([
            (name, {s: [x for r in records if r["entry"] == name for x in r["shards"][s]] for s in ("train", "val")},
             {s: sum(r["documents"][s] for r in records if r["entry"] == name) for s in ("train", "val")})
            for name in names])
    return manifest
