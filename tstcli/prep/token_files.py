"""Tokens users already have: flat files of token ids (nanoGPT's `train.bin` / `val.bin`: raw little-endian uint16
or uint32, documents separated by the end-of-text token) become a preparation's shards without re-tokenizing.

datatrove's `DocumentTokenizer` output is read too: `X.ds` holds the ids with no separator unless it was run with
`eos_token`, and `X.ds.index` beside it the documents' ends (little-endian uint64 token offsets). With an index, an
end-of-text token is inserted after every document that does not already end with one, so the shards come out
separated like every other preparation; without one, `X.ds` is read like any flat file.

The validation split is either explicit (`data.token_val_files`) or the last `data.val_fraction` of the training
files' tokens, cut just after a document's end so no document is split. Files are read in chunks of
`CHUNK` tokens (memory bounded), checked (size a whole number of tokens, every id within the tokenizer's
vocabulary, an index consistent with its file) and re-written as shards with sha256 like those `tst prepare`
tokenizes itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from tstcli.errors import DataError
from tstcli.prep import shard_writer
from tstcli.prep.tokenizer import eot_id, load_tokenizer, tokenizer_sha256
from tstcli.recipe import DataConfig

CHUNK = 1 << 24  # tokens (or index entries) per read
INDEX = np.dtype("<u8")  # datatrove's TokenizedFile.close(): struct.pack("<%sQ", *doc_ends)


class Part(NamedTuple):
    tokens: np.ndarray  # ids to write, end-of-text tokens inserted at indexed document ends
    ends: np.ndarray  # offsets in `tokens` just after each document's last token (its end-of-text token)
    read_ends: np.ndarray  # the same ends as offsets in the tokens read from the file (the val_fraction cut's unit)
    read: int  # tokens read from the file


def _index_path(p: Path) -> Path | None:
    """datatrove's document index beside a `.ds` file, if any."""
    index = p.with_name(p.name + ".index")
    return index if p.suffix == ".ds" and index.is_file() else None


def files(paths: list[str], key: str) -> list[dict]:
    """[{origin, path, fingerprint, bytes, index}] of local token files (size + mtime, the index's too, decide
    whether prepare is stale)."""
    out = []
    for origin in paths:
        p = Path(origin).expanduser()
        if not p.is_file():
            raise DataError(f"{key}: {origin}: no such file")
        st, index = p.stat(), _index_path(p)
        fingerprint = f"{st.st_size}:{st.st_mtime_ns}"
        if index is not None:
            ist = index.stat()
            fingerprint += f"+index:{ist.st_size}:{ist.st_mtime_ns}"
        out.append({"origin": origin, "path": str(p), "fingerprint": fingerprint, "bytes": st.st_size,
                    "index": None if index is None else str(index)})
    return out


def _doc_ends(f: dict, tokens: int, dtype: np.dtype) -> np.ndarray | None:
    """The memory-mapped, checked document ends of `f`'s datatrove index (None without one), checked before the
    file is read: inserting separators at ends that are not the file's would silently mangle its documents."""
    if f.get("index") is None:
        return None
    name = f"{f['origin']}.index"
    size = Path(f["index"]).stat().st_size
    if size % INDEX.itemsize:
        raise DataError(f"{name}: {size} bytes is not a whole number of uint64 document ends (datatrove .ds.index)")
    ends = np.memmap(f["index"], dtype=INDEX, mode="r") if size else np.zeros(0, INDEX)
    last = 0
    for start in range(0, len(ends), CHUNK):  # chunked: an index holds 8 bytes per document
        part = np.asarray(ends[start:start + CHUNK])
        if (bad := np.flatnonzero(part < np.concatenate((np.array([last], INDEX), part[:-1])))).size:
            raise DataError(f"{name}: document end {int(part[bad[0]]):,} (entry {start + int(bad[0]):,}) is before "
                            "the one preceding it; not a datatrove .ds.index")
        last = int(part[-1])
    if last != tokens:
        raise DataError(f"{name}: the last document ends at token {last:,} but {f['origin']} holds {tokens:,} "
                        f"{dtype.name} tokens; wrong data.token_dtype, or not this file's index?")
    return ends


def _separate(part: np.ndarray, start: int, doc_ends: np.ndarray, eot: int) -> Part:
    """`part` (the file's tokens from `start`) with an end-of-text token after each indexed document end in it that
    has none: datatrove writes one only when run with `eos_token`."""
    # ends in (start, start + len]; uint64 bounds so numpy searches the mapped index in place instead of converting it
    lo, hi = np.searchsorted(doc_ends, np.array([start, start + len(part)], INDEX), side="right")
    read_ends = np.unique(np.asarray(doc_ends[lo:hi])).astype(np.int64) - start  # unique: empty documents add none
    missing = part[read_ends - 1] != eot
    ends = read_ends + np.cumsum(missing)  # each end moves by the tokens inserted up to and including it
    return Part(np.insert(part, read_ends[missing], eot), ends, read_ends, len(part))


def _parts(f: dict, dtype: np.dtype, vocab: int, eot: int, key: str) -> Iterator[Part]:
    if f["bytes"] % dtype.itemsize:
        raise DataError(f"{f['origin']}: {f['bytes']} bytes is not a whole number of {dtype.name} tokens "
                        f"({key}; data.token_dtype = {dtype.name!r})")
    doc_ends = _doc_ends(f, f["bytes"] // dtype.itemsize, dtype)
    if f["bytes"] == 0:
        return
    mm = np.memmap(f["path"], dtype=dtype, mode="r")
    for start in range(0, len(mm), CHUNK):
        part = np.asarray(mm[start:start + CHUNK])
        if part.max() >= vocab:
            i = int(np.argmax(part >= vocab))
            raise DataError(f"{f['origin']}: token id {int(part[i])} at token {start + i:,} is beyond the vocabulary "
                            f"({vocab}) of data.tokenizer; wrong data.token_dtype or tokenizer?")
        if doc_ends is None:  # a flat file: its end-of-text tokens end the documents
            ends = np.flatnonzero(part == eot) + 1
            yield Part(part, ends, ends, len(part))
        else:
            yield _separate(part, start, doc_ends, eot)


def write(cfg: DataConfig, train: list[dict], val: list[dict], vocab: int, eot: int, writers: dict) -> dict:
    """Stream the files into the split writers; returns documents per split (document ends, plus a last
    document without one)."""
    dtype = np.dtype(cfg.token_dtype).newbyteorder("<")
    docs = {"train": 0, "val": 0}
    ends_open = {"train": False, "val": False}

    def put(split: str, tokens: np.ndarray, ends: np.ndarray) -> None:
        if len(tokens):
            writers[split].write(tokens)
            docs[split] += len(ends)
            ends_open[split] = not len(ends) or int(ends[-1]) != len(tokens)

    if val:
        for f in train:
            for p in _parts(f, dtype, vocab, eot, "data.token_files"):
                put("train", p.tokens, p.ends)
        for f in val:
            for p in _parts(f, dtype, vocab, eot, "data.token_val_files"):
                put("val", p.tokens, p.ends)
    else:  # the last val_fraction of the files' tokens, from the first document end on
        total = sum(f["bytes"] // dtype.itemsize for f in train)
        cut, seen, split = int(total * (1 - cfg.val_fraction)), 0, "train"
        for f in train:
            for p in _parts(f, dtype, vocab, eot, "data.token_files"):
                if split == "train" and seen + p.read > cut:
                    k = int(np.searchsorted(p.read_ends, cut - seen, side="right"))  # the first end past the cut
                    if k < len(p.ends):
                        at = int(p.ends[k])
                        put("train", p.tokens[:at], p.ends[:k + 1])
                        r = int(p.read_ends[k])
                        p, split = Part(p.tokens[at:], p.ends[k + 1:] - at, p.read_ends[k + 1:] - r, p.read - r), "val"
                put(split, p.tokens, p.ends)
                seen += p.read if split == "train" else 0
        if split == "train":
            raise DataError(f"data.token_files: no end-of-text token (id {eot}) in the last {cfg.val_fraction:.0%} of "
                            "the tokens to start a validation split at: pass data.token_val_files")
    return {s: docs[s] + int(ends_open[s]) for s in docs}


def register(cfg: DataConfig, train: list[dict], val: list[dict], tmp: Path, inputs: dict) -> dict:
    """data.token_files re-written as shards (checked, hashed) into `tmp`; returns the manifest."""
    tok = load_tokenizer(cfg.tokenizer)
    eot = eot_id(tok, cfg.eot_token, "data.eot_token")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = shard_writer.token_dtype(vocab)
    writers = {s: shard_writer.ShardWriter(tmp, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    docs = write(cfg, train, val, vocab, eot, writers)
    split_shards = {s: w.finish() for s, w in writers.items()}
    for split, key in (("train", "data.token_files"), ("val", "data.token_val_files")):
        if not sum(x["tokens"] for x in split_shards[split]):
            raise DataError(f"{key}: no {split} tokens")
    tok.save(str(tmp / "tokenizer.json"))
    return shard_writer.new_manifest(cfg, inputs, [{"origin": f["origin"], "path": f["path"], "bytes": f["bytes"],
                                              "split": split} for split, fs in (("train", train), ("val", val))
                                             for f in fs], tokenizer_sha256(tok), eot, vocab, 0, docs, split_shards)
