"""`prepare`: the recipe's data made ready in its data directory — tokenized (`encode.py`) or registered from
token files (`token_files.py`), written to a temporary folder and installed with its manifest, under the data
directory's lock. Re-running with the same inputs finds the manifest up to date and does nothing.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tstcli import locks
from tstcli.data import dependents, shards, sources, token_files
from tstcli.data.encode import Groups, tokenize
from tstcli.errors import DataError, as_error, environment_fault
from tstcli.recipe import DataConfig


@dataclass(frozen=True)
class PrepareResult:
    data_dir: Path
    manifest: dict
    up_to_date: bool
    seconds: float
    source_bytes: int


def _resolve(cfg: DataConfig) -> Groups:
    """The source files, grouped by mixture entry (one unnamed group without a mixture); hub files fetched here."""
    if cfg.mix:
        return [(e.name, sources.resolve(e.sources, f"data.mix[{i}].sources")) for i, e in enumerate(cfg.mix)]
    return [(None, sources.resolve(cfg.sources))]


def _inputs(cfg: DataConfig, groups: Groups) -> dict:
    tok = cfg.tokenizer
    tok_path = Path(tok).expanduser()
    if tok != "bpe" and (tok_path.is_file() or (tok_path / "tokenizer.json").is_file()):
        tok = "sha256:" + shards.file_sha256(tok_path if tok_path.is_file() else tok_path / "tokenizer.json")
    return {
        "format": shards.FORMAT_VERSION,
        "sources": [{"origin": f.origin, "fingerprint": f.fingerprint} for _, files in groups for f in files],
        "tokenizer": tok,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        "tokenizer_train_chars": cfg.tokenizer_train_chars if cfg.tokenizer == "bpe" else None,
        "eot_token": cfg.eot_token,
        "text_field": cfg.text_field,
        "txt_documents": cfg.txt_documents,
        "val_fraction": cfg.val_fraction,
        "shard_tokens": cfg.shard_tokens,
        # Names and grouping only: weights decide the packing, not the shards.
        **({"mix": [{"name": name, "files": len(files)} for name, files in groups]} if cfg.mix else {}),
    }


def _token_inputs(cfg: DataConfig, train: list[dict], val: list[dict]) -> dict:
    inputs = _inputs(cfg, [(None, [])])
    del inputs["sources"], inputs["text_field"], inputs["txt_documents"]
    return {**inputs, "token_files": [{"origin": f["origin"], "fingerprint": f["fingerprint"]} for f in train],
            "token_val_files": [{"origin": f["origin"], "fingerprint": f["fingerprint"]} for f in val],
            "token_dtype": cfg.token_dtype, "val_fraction": None if val else cfg.val_fraction}


def _holds(data_dir: Path, inputs: dict) -> bool:
    """`data_dir` holds a preparation of exactly these inputs (its shards are verified separately, so a corrupt
    shard is reported as such rather than silently rebuilt)."""
    return (data_dir / shards.MANIFEST).is_file() and shards.read_manifest(data_dir).get("inputs") == inputs


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
        groups = _resolve(cfg)  # once: hub sources are listed and fetched here
        source_bytes = sum(Path(f.path).stat().st_size for _, files in groups for f in files)
        inputs = _inputs(cfg, groups)
    if not force and _holds(data_dir, inputs):
        return PrepareResult(data_dir, shards.read_manifest(data_dir), True, time.perf_counter() - t0, source_bytes)
    what = (f"registering the token files {', '.join(cfg.token_files + cfg.token_val_files)}" if cfg.token_files
            else f"tokenizing the mixture {', '.join(e.name for e in cfg.mix)}" if cfg.mix
            else f"tokenizing {', '.join(cfg.sources)}")
    log(f"prepare: data in {data_dir} is {'rebuilt (--force)' if force else 'missing or stale'}; {what}")
    dependents.refuse_replacing(data_dir)
    tmp = _writable_tmp(data_dir)
    try:
        manifest = (token_files.register(cfg, train, val, tmp, inputs) if cfg.token_files
                    else tokenize(cfg, groups, inputs, source_bytes, tmp, log))
        _install(data_dir, tmp, manifest)
    except BaseException as e:  # Ctrl-C and SIGTERM included: leave no temporary files behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and environment_fault(e) is not None:
            raise as_error(e, DataError, f"preparing {data_dir}", path=tmp) from None
        raise
    return PrepareResult(data_dir, manifest, False, time.perf_counter() - t0, source_bytes)


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
