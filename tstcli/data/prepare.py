"""`prepare`: stream the corpus once or twice, tokenize it, write train/val shards and the manifest.

Pass 1 (only for a trained tokenizer) streams the training documents into the BPE trainer. Pass 2 streams every
document, sends it to the validation or training split by a hash of its text (a split by document, stable under
reordering of sources), tokenizes in batches and appends to the shard writers. Memory is bounded by one batch.
Re-running with the same inputs finds the manifest up to date and does nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from tstcli import locks
from tstcli.data import dependents, readers, shards, sources, token_files
from tstcli.data.tokenizer import eot_id, load_tokenizer, tokenizer_sha256, train_bpe
from tstcli.errors import DataError, as_error, environment_fault
from tstcli.recipe import DataConfig

BATCH_CHARS = 4_000_000  # characters per encode_batch call: large enough to use every core, small enough to stream
# A document longer than this is tokenized in pieces of at most this many characters, cut where a run of whitespace
# begins (so the pre-tokenizer sees the same words): memory stays bounded however long one document is.
PIECE_CHARS = 250_000


@dataclass(frozen=True)
class PrepareResult:
    data_dir: Path
    manifest: dict
    up_to_date: bool
    seconds: float
    source_bytes: int


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


def _inputs(cfg: DataConfig, files: list[sources.SourceFile]) -> dict:
    tok = cfg.tokenizer
    tok_path = Path(tok).expanduser()
    if tok != "bpe" and (tok_path.is_file() or (tok_path / "tokenizer.json").is_file()):
        tok = "sha256:" + shards.file_sha256(tok_path if tok_path.is_file() else tok_path / "tokenizer.json")
    return {
        "format": shards.FORMAT_VERSION,
        "sources": [{"origin": f.origin, "fingerprint": f.fingerprint} for f in files],
        "tokenizer": tok,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        "tokenizer_train_chars": cfg.tokenizer_train_chars if cfg.tokenizer == "bpe" else None,
        "eot_token": cfg.eot_token,
        "text_field": cfg.text_field,
        "txt_documents": cfg.txt_documents,
        "val_fraction": cfg.val_fraction,
        "shard_tokens": cfg.shard_tokens,
    }


def _token_inputs(cfg: DataConfig, train: list[dict], val: list[dict]) -> dict:
    inputs = _inputs(cfg, [])
    del inputs["sources"], inputs["text_field"], inputs["txt_documents"]
    return {**inputs, "token_files": [{"origin": f["origin"], "fingerprint": f["fingerprint"]} for f in train],
            "token_val_files": [{"origin": f["origin"], "fingerprint": f["fingerprint"]} for f in val],
            "token_dtype": cfg.token_dtype, "val_fraction": None if val else cfg.val_fraction}


def _holds(data_dir: Path, inputs: dict) -> bool:
    """`data_dir` holds a preparation of exactly these inputs (its shards are verified separately, so a corrupt
    shard is reported as such rather than silently rebuilt)."""
    return (data_dir / shards.MANIFEST).is_file() and shards.read_manifest(data_dir).get("inputs") == inputs


def _documents(files, cfg: DataConfig, split: str) -> Iterator[str]:
    for f in files:
        for doc in sources.iter_documents(f, cfg.text_field, cfg.txt_documents):
            if (split == "val") == _is_val(doc, cfg.val_fraction):
                yield from pieces(doc)


def _encode(tok, docs: list[str]) -> list[list[int]]:
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(docs, add_special_tokens=False)]


@contextlib.contextmanager
def data_lock(data_dir: Path, log=print):
    """Hold `data_dir`'s lock: one process at a time prepares, packs or registers a run there; the others wait
    (then find the data up to date). A directory that cannot be written is used unlocked: nothing can change it."""
    try:
        lock = locks.DirLock(data_dir).acquire(
            wait=True, on_wait=lambda who: log(f"prepare: {data_dir} is in use by {who}; waiting for it"))
    except OSError as e:
        if environment_fault(e) is None:
            raise
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _writable_tmp(data_dir: Path) -> Path:
    """The temporary folder of this preparation, made before any expensive work: a data.dir that cannot be written
    fails here, not after training a tokenizer."""
    tmp = data_dir / ".prepare-tmp"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise as_error(e, DataError, f"data.dir {data_dir} must be writable to prepare data",
                       path=data_dir) from None
    return tmp


def prepare(cfg: DataConfig, data_dir: Path, force: bool = False, log=print) -> PrepareResult:
    """Tokenize and shard `cfg`'s sources into `data_dir` (the caller holds `data_lock(data_dir)`)."""
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    if cfg.token_files:
        train, val = (token_files.files(cfg.token_files, "data.token_files"),
                      token_files.files(cfg.token_val_files, "data.token_val_files"))
        source_bytes = sum(f["bytes"] for f in train + val)
        inputs = _token_inputs(cfg, train, val)
    else:
        files = sources.resolve(cfg.sources)  # once: hub sources are listed and fetched here
        source_bytes = sum(Path(f.path).stat().st_size for f in files)
        inputs = _inputs(cfg, files)
    if not force and _holds(data_dir, inputs):
        return PrepareResult(data_dir, shards.read_manifest(data_dir), True, time.perf_counter() - t0, source_bytes)
    what = (f"registering the token files {', '.join(cfg.token_files + cfg.token_val_files)}" if cfg.token_files
            else f"tokenizing {', '.join(cfg.sources)}")
    log(f"prepare: data in {data_dir} is {'rebuilt (--force)' if force else 'missing or stale'}; {what}")
    dependents.refuse_replacing(data_dir)
    tmp = _writable_tmp(data_dir)
    try:
        manifest = (token_files.register(cfg, train, val, tmp, inputs) if cfg.token_files
                    else _tokenize(cfg, files, inputs, source_bytes, tmp, log))
        _install(data_dir, tmp, manifest)
    except BaseException as e:  # Ctrl-C and SIGTERM included: leave no temporary files behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and environment_fault(e) is not None:
            raise as_error(e, DataError, f"preparing {data_dir}", path=tmp) from None
        raise
    return PrepareResult(data_dir, manifest, False, time.perf_counter() - t0, source_bytes)


def _tokenize(cfg: DataConfig, files: list[sources.SourceFile], inputs: dict, source_bytes: int, tmp: Path,
              log) -> dict:
    """Pass 1 (a trained tokenizer) and pass 2 into `tmp`; returns the manifest."""
    show = sys.stderr.isatty()
    if cfg.tokenizer == "bpe":
        sample = f"a sample of up to {cfg.tokenizer_train_chars:,} characters of " if cfg.tokenizer_train_chars else ""
        log(f"prepare: training a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on {sample}the training documents")
        tok = train_bpe(_documents(files, cfg, "train"), cfg.vocab_size, cfg.eot_token, show, cfg.tokenizer_train_chars)
    else:
        tok = load_tokenizer(cfg.tokenizer)
    eot = eot_id(tok, cfg.eot_token, "data.eot_token")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = shards.token_dtype(vocab)

    writers = {s: shards.ShardWriter(tmp, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    docs_per_split = {"train": 0, "val": 0}
    chars = 0
    bar = tqdm(total=source_bytes, unit="B", unit_scale=True, desc="tokenize", disable=not show, file=sys.stderr)
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
    for f in files:
        for doc in sources.iter_documents(f, cfg.text_field, cfg.txt_documents, decode):
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
        bar.update(Path(f.path).stat().st_size)
    for split in ("train", "val"):
        if batches[split]:
            encode_and_write(split)
    bar.close()
    if decode.replaced:
        log(f"prepare: warning: {decode.summary()}")
    split_shards = {s: w.finish() for s, w in writers.items()}
    if docs_per_split["train"] + docs_per_split["val"] == 0:
        raise DataError(f"data.sources: {', '.join(cfg.sources)} hold no documents (every file is empty)")
    for split in ("train", "val"):
        if docs_per_split[split] == 0:
            what = "no document fell in the validation split: raise data.val_fraction or add documents" \
                if split == "val" else "no training documents: lower data.val_fraction or add documents"
            raise DataError(f"data.sources: {what}")

    tok.save(str(tmp / "tokenizer.json"))
    return shards.new_manifest(cfg, inputs, [{"origin": f.origin, "path": f.path, "bytes": Path(f.path).stat().st_size}
                                             for f in files], tokenizer_sha256(tok), eot, vocab, chars, docs_per_split,
                               split_shards)


def _install(data_dir: Path, tmp: Path, manifest: dict) -> None:
    """Replace the previous preparation: drop its manifest first so a crash never leaves a manifest over mixed
    files."""
    (data_dir / shards.MANIFEST).unlink(missing_ok=True)
    for old in list(data_dir.glob("train-*.bin")) + list(data_dir.glob("val-*.bin")):
        old.unlink()
    shutil.rmtree(data_dir / "packs", ignore_errors=True)
    for p in tmp.iterdir():
        p.replace(data_dir / p.name)
    tmp.rmdir()
    shards.write_json_atomic(data_dir / shards.MANIFEST, manifest)


def ensure_prepared(r, force: bool = False, log=print) -> tuple[Path, PrepareResult | None]:
    """Prepare the recipe's data if it is missing or stale (saying so), else leave it. (data dir, result or None)
    The caller holds `data_lock(r.data_dir)`."""
    data_dir = Path(r.data_dir)
    result = prepare(r.data, data_dir, force=force, log=log)
    return data_dir, (None if result.up_to_date else result)


def prepare_recipe(r, force: bool = False, verify: bool = False, log=print) -> dict:
    """`tst prepare`: the recipe's data prepared (if missing, stale or forced), checked, and its rows packed.
    Returns what it found and did (a JSON-able dict)."""
    from tstcli.data import packing

    with data_lock(Path(r.data_dir), log):
        data_dir, result = ensure_prepared(r, force=force, log=log)
        manifest = shards.read_manifest(data_dir)
        if result is None:
            log(f"prepare: {data_dir} is up to date with the recipe's sources and tokenizer; nothing to do "
                "(--force rebuilds)")
        shards.verify(data_dir, manifest, full=verify)
        pack, built = packing.ensure_pack(r, data_dir, manifest, shards.manifest_sha256(data_dir))
    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    out = {"data_dir": str(data_dir), "up_to_date": result is None, "vocab_size": manifest["vocab_size"],
           "dtype": manifest["dtype"], "train_tokens": tr["tokens"], "val_tokens": va["tokens"],
           "train_documents": tr["documents"], "val_documents": va["documents"], "pack": str(pack.directory),
           "pack_built": built, "coverage": pack.info, "verified": verify}
    if result is not None:
        mb = result.source_bytes / 1e6
        out.update(seconds=result.seconds, mb_per_s=mb / result.seconds, source_mb=mb)
    return out
