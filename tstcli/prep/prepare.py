"""`prepare`: the recipe's data made ready in its data directory — tokenized (`encode.py`) or registered from
token files (`token_files.py`), by one or several workers in the work directory (`work.py`), then installed with
its manifest under the data directory's lock. Re-running with the same inputs finds the manifest up to date and does nothing.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tstcli import locks
from tstcli.data import documents, shards
from tstcli.errors import DataError, SourceUnavailable, Terminated, as_error, environment_fault
from tstcli.files import file_sha256
from tstcli.prep import dependents, encode, holdings, location, readers, sources, token_files, units, work
from tstcli.prep.encode import Groups
from tstcli.prep.tokenizer import tokenizer_sha256
from tstcli.recipe import DataConfig


@dataclass(frozen=True)
class PrepareResult:
    data_dir: Path
    manifest: dict
    up_to_date: bool
    seconds: float
    source_bytes: int
    units: dict | None = None  # work units: total, tokenized here, unfinished (a worker that does not merge)


def _resolve(cfg: DataConfig) -> Groups:
    """The source files, grouped by mixture entry (one unnamed group without a mixture); hub files fetched here."""
    if cfg.mix:
        return [(e.name, sources.resolve(e.sources, f"data.mix[{i}].sources", cfg.stream))
                for i, e in enumerate(cfg.mix)]
    return [(None, sources.resolve(cfg.sources, stream=cfg.stream))]


def _inputs(cfg: DataConfig, groups: Groups) -> dict:
    tok = cfg.tokenizer
    tok_path = Path(tok).expanduser()
    if tok != "bpe" and (tok_path.is_file() or (tok_path / "tokenizer.json").is_file()):
        tok = "sha256:" + file_sha256(tok_path if tok_path.is_file() else tok_path / "tokenizer.json")
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
        "unit_mb": cfg.unit_mb,
        # Names and grouping only: weights decide the packing, not the shards.
        **({"mix": [{"name": name, "files": len(files)} for name, files in groups]} if cfg.mix else {}),
    }


def _token_inputs(cfg: DataConfig, train: list[dict], val: list[dict]) -> dict:
    inputs = _inputs(cfg, [(None, [])])
    del inputs["sources"], inputs["text_field"], inputs["txt_documents"], inputs["unit_mb"]
    return {**inputs, "token_files": [{"origin": f["origin"], "fingerprint": f["fingerprint"]} for f in train],
            "token_val_files": [{"origin": f["origin"], "fingerprint": f["fingerprint"]} for f in val],
            "token_dtype": cfg.token_dtype, "val_fraction": None if val else cfg.val_fraction}


_held: dict[str, int] = {}  # data dirs whose lock this process holds, and how many times over


@contextlib.contextmanager
def data_lock(data_dir: Path, log=print):
    """Hold `data_dir`'s lock: one process at a time prepares, packs or registers a run there; the others wait
    (then find the data up to date). Re-entrant within a process. A directory that cannot be written is used
    unlocked: nothing can change it."""
    key = str(Path(data_dir).resolve())
    if not _held.get(key):
        holdings.check_ours(Path(data_dir))
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        lock = locks.DirLock(data_dir).acquire(
            wait=True, on_wait=lambda who: log(f"prepare: {data_dir} is in use by {who}; waiting for it"))
    except OSError as e:
        if environment_fault(e) is None:
            raise
        lock = None
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if lock is not None:
            lock.release()


def prepare(cfg: DataConfig, data_dir: Path, force: bool = False, log=print,
            worker: work.Worker = work.Worker()) -> PrepareResult:
    """Tokenize and shard `cfg`'s sources into `data_dir`: this worker's units, and the manifest if it merges. A
    single worker holds the data lock throughout (a second process waits, then finds the data ready); several take
    it only to make the tokenizer and to merge."""
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    if cfg.token_files:
        train, val = (token_files.files(cfg.token_files, "data.token_files"),
                      token_files.files(cfg.token_val_files, "data.token_val_files"))
        source_bytes = sum(f["bytes"] for f in train + val)
        inputs = _token_inputs(cfg, train, val)
    else:
        groups = _resolve(cfg)  # once: hub sources are listed and fetched here
        source_bytes = sum(f.size for _, files in groups for f in files)
        inputs = _inputs(cfg, groups)

    def result(up_to_date: bool, **units) -> PrepareResult:
        manifest = shards.read_manifest(data_dir) if (data_dir / shards.MANIFEST).is_file() else None
        return PrepareResult(data_dir, manifest, up_to_date, time.perf_counter() - t0, source_bytes, units or None)

    if not force and holdings.holds(data_dir, inputs):
        return result(True)
    # --force over the same inputs is the documented repair of a damaged shard: allowed under the runs that read
    # the data, provided the rebuild gives the tokens the manifest records (checked before anything is replaced).
    repair = force and holdings.holds(data_dir, inputs)
    before = shards.read_manifest(data_dir) if repair else None
    if worker.index == 0 or worker.alone:
        what = (f"registering the token files {', '.join(cfg.token_files + cfg.token_val_files)}" if cfg.token_files
                else f"tokenizing the mixture {', '.join(e.name for e in cfg.mix)}" if cfg.mix
                else f"tokenizing {', '.join(cfg.sources)}")
        log(f"prepare: data in {data_dir} is {'rebuilt (--force)' if force else 'missing or stale'}; {what}")
    with data_lock(data_dir, log) if worker.alone else contextlib.nullcontext():
        with data_lock(data_dir, log):
            if not repair:
                dependents.refuse_replacing(data_dir)
            wd = work.open_work(data_dir, {**inputs, "stream": cfg.stream}, fresh=force)  # a stream changes the units
        try:
            if cfg.token_files:
                done = _register(cfg, data_dir, wd, inputs, train, val, worker, log)
                return result(False) if done else _wait_or_leave(data_dir, inputs, worker, result)
            plan = units.plan(groups, cfg.unit_mb * 10 ** 6)
            if not worker.tokenize:  # a merge alone: refuse unfinished work before making any tokenizer
                work.refuse_unfinished(wd, plan, worker)
            with data_lock(data_dir, log):
                tok, eot, vocab = work.tokenizer(cfg, wd, [f for _, fs in groups for f in fs], log)
            did, busy = work.run_units(cfg, wd, plan, worker, tok, eot, log) if worker.tokenize else (0, [])
            while busy and worker.merge and not worker.wait:  # another process holds some of our units: wait, and
                time.sleep(work.POLL_S)                         # take over those whose holder died unfinished
                more, busy = work.run_units(cfg, wd, plan, worker, tok, eot, lambda *_: None)
                did += more
            if not worker.merge:
                return _wait_or_leave(data_dir, inputs, worker, result, plan=plan, wd=wd, did=did)
            if worker.wait:
                work.wait_for_units(wd, plan, log)
            work.refuse_unfinished(wd, plan, worker)
            with data_lock(data_dir, log):
                if repair or not holdings.holds(data_dir, inputs):
                    if not repair:
                        dependents.refuse_replacing(data_dir)  # again: a run may have registered while we tokenized
                    recs = work.records(wd, plan)
                    _say_not_utf8(recs, log)
                    manifest = encode.manifest_of(cfg, inputs, groups, plan, recs, tokenizer_sha256(tok), eot, vocab)
                    if repair and json.loads(json.dumps(manifest)) != before and dependents.live(data_dir):
                        raise DataError(f"{data_dir}: rebuilding the same inputs gave other tokens than its "
                                        "manifest.json records; the prepared data, which runs read, is left as it was")
                    work.install(data_dir, wd, manifest)
        except BaseException as e:
            _after_failure(data_dir, wd, e, worker)
            raise
    return result(False, total=len(plan), tokenized_here=did)


def _register(cfg, data_dir: Path, wd: Path, inputs: dict, train, val, worker: work.Worker, log) -> bool:
    """Token files are registered by the merging process alone (they need no tokenizing); True when it did."""
    if not worker.merge:
        return False
    with data_lock(data_dir, log):
        if not holdings.holds(data_dir, inputs):
            work.install(data_dir, wd, token_files.register(cfg, train, val, wd, inputs))
    return True


def _wait_or_leave(data_dir: Path, inputs: dict, worker: work.Worker, result, plan=None, wd=None, did=0):
    """A worker that does not merge: under torchrun it waits for the manifest; in a SLURM array it is done."""
    if worker.wait:
        while not holdings.holds(data_dir, inputs):
            time.sleep(work.POLL_S)
        return result(False)
    left = len(units.unfinished(wd, plan)) if plan is not None else 0  # token files: nothing to tokenize
    return result(False, total=len(plan) if plan is not None else 0, tokenized_here=did, unfinished=left)


def _after_failure(data_dir: Path, wd: Path, e: BaseException, worker: work.Worker) -> None:
    """A failed preparation leaves no half-written unit (`run_units` drops it). A lone worker that failed on its
    input also drops its finished units (they are for inputs that must change); one that was interrupted or met a
    hostile environment (disk full, network down) keeps them for the re-run, and so does one of several workers
    (the others' units are not its to drop)."""
    resumable = isinstance(e, (KeyboardInterrupt, Terminated, SourceUnavailable)) or (
        isinstance(e, OSError) and environment_fault(e) is not None)
    if worker.alone and worker.tokenize and not resumable:
        shutil.rmtree(wd, ignore_errors=True)
    elif worker.alone and not list((wd / units.RECORDS).glob("*.json")):
        shutil.rmtree(wd, ignore_errors=True)  # nothing finished to keep
    if isinstance(e, OSError) and environment_fault(e) is not None:
        raise as_error(e, DataError, f"preparing {data_dir}", path=wd) from None


def _say_not_utf8(recs: list[dict], log) -> None:
    """One warning for the whole preparation, from every unit's count."""
    stats = readers.DecodeStats()
    stats.by_file.update({origin: n for r in recs for origin, n in r["not_utf8_bytes"].items() if n})
    if stats.replaced:
        log(f"prepare: warning: {stats.summary()}")


def ensure_prepared(r, force: bool = False, log=print,
                    worker: work.Worker = work.Worker()) -> tuple[Path, PrepareResult | None]:
    """Prepare the recipe's data if it is missing or stale (saying so), else leave it. (data dir, result or None)"""
    data_dir = location.data_dir(r)
    result = prepare(r.data, data_dir, force=force, log=log, worker=worker)
    return data_dir, (None if result.up_to_date else result)


def prepare_recipe(r, force: bool = False, verify: bool = False, log=print,
                   worker: work.Worker = work.Worker()) -> dict:
    """`tst prepare`: the recipe's data prepared (if missing, stale or forced), checked, and its rows packed; for a
    worker that does not merge, its units tokenized. Returns what it found and did (a JSON-able dict)."""
    from tstcli.data import packing

    data_dir = location.data_dir(r)
    if not worker.merge:
        result = prepare(r.data, data_dir, force=force, log=log, worker=worker)
        out = {"data_dir": str(data_dir), "up_to_date": result.up_to_date, "worker": worker.index,
               "workers": worker.count}
        return {**out, "units": result.units} if result.units else out
    with data_lock(data_dir, log) if worker.alone else contextlib.nullcontext():
        _, result = ensure_prepared(r, force=force, log=log, worker=worker)
        with data_lock(data_dir, log):
            manifest = shards.read_manifest(data_dir)
            if result is None:
                log(f"prepare: {data_dir} is up to date with the recipe's sources and tokenizer; nothing to do "
                    "(--force rebuilds)")
            shards.verify(data_dir, manifest, full=verify)
            pack, built = packing.ensure_pack(r.plan, r.run.seed, r.data, data_dir, manifest,
                                              shards.manifest_sha256(data_dir))
    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    out = {"data_dir": str(data_dir), "up_to_date": result is None, "vocab_size": manifest["vocab_size"],
           "dtype": manifest["dtype"], "train_tokens": tr["tokens"], "val_tokens": va["tokens"],
           "train_documents": tr["documents"], "val_documents": va["documents"], "pack": str(pack.directory),
           "pack_built": built, "coverage": pack.info, "verified": verify,
           "documents": documents.effects(r, manifest)}
    if result is not None:
        mb = result.source_bytes / 1e6
        out.update(seconds=result.seconds, mb_per_s=mb / result.seconds, source_mb=mb)
        if result.units:
            out["units"] = result.units
    return out
