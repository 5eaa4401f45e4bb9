"""The work directory of a preparation (`DATA_DIR/.prepare-work/`), shared by its workers: the inputs it is for,
the tokenizer every worker encodes with, each finished unit's shards and record. Finished units survive a crash or
a stop and are not redone; the merge installs the shards and writes the manifest once every unit is finished.

Workers never wait on a collective: the process that merges polls for the units' records, the others for the
manifest, however long the work takes (a dead worker takes a torchrun job down; a SLURM array is re-run).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tstcli import locks
from tstcli.data import shards
from tstcli.errors import DataError, as_error
from tstcli.files import replacing, write_json_atomic
from tstcli.prep import shard_writer, units as unit_plan
from tstcli.prep.encode import make_tokenizer, tokenize_unit
from tstcli.prep.tokenizer import eot_id, load_tokenizer
from tstcli.prep.units import Unit

WORK = ".prepare-work"
POLL_S = 2.0


@dataclass(frozen=True)
class Worker:
    """This process's part in a preparation: worker `index` of `count` tokenizes its units; with `merge` it writes
    the manifest; with `wait` it waits for the other workers (torchrun) instead of failing on unfinished units."""
    index: int = 0
    count: int = 1
    tokenize: bool = True
    merge: bool = True
    wait: bool = False

    @property
    def alone(self) -> bool:
        return self.count == 1


def open_work(data_dir: Path, inputs: dict, fresh: bool) -> Path:
    """The work directory for `inputs` (the caller holds the data lock): made if missing, emptied if it holds work
    for other inputs or `fresh`. Made before any expensive work: an unwritable data.dir fails here."""
    work = data_dir / WORK
    stamp = work / "inputs.json"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            same = json.loads(stamp.read_text()) == inputs
        except (OSError, ValueError):
            same = False
        if fresh or not same:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            write_json_atomic(stamp, inputs)
    except OSError as e:
        raise as_error(e, DataError, f"data.dir {data_dir} must be writable to prepare data", path=data_dir) from None
    return work


def tokenizer(cfg, work: Path, files, log):
    """The tokenizer of this preparation, made once (a BPE is trained by the first worker; the caller holds the data
    lock, so the others wait for it) and saved in the work directory for every worker. (tokenizer, eot id, vocab)"""
    path = work / "tokenizer.json"
    if path.is_file():
        tok = load_tokenizer(str(path))
        return tok, eot_id(tok, cfg.eot_token, "data.eot_token"), tok.get_vocab_size(with_added_tokens=True)
    tok, eot, vocab = make_tokenizer(cfg, files, work / "download", log)
    with replacing(path) as tmp:
        tok.save(str(tmp))
    return tok, eot, vocab


@contextlib.contextmanager
def _claim(work: Path, unit: Unit):
    """Whether this process may tokenize `unit` now: no other process holds its claim (a `DirLock` on
    `units/uNNNNNN.lock`, dropped by the kernel when its holder dies)."""
    try:
        lock = locks.DirLock(work / unit_plan.RECORDS, f"{unit.name}.lock").acquire()
    except locks.Busy:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def run_units(cfg, work: Path, plan: list[Unit], worker: Worker, tok, eot: int, log) -> tuple[int, list[Unit]]:
    """Tokenize this worker's unfinished units. Returns how many it did, and the units another process was
    tokenizing meanwhile (a second launch of the same worker). An interrupted unit leaves no shard."""
    dtype = shard_writer.token_dtype(tok.get_vocab_size(with_added_tokens=True))
    todo = [u for u in unit_plan.mine(plan, worker.index, worker.count) if unit_plan.finished(work, u) is None]
    who = "" if worker.alone else f"worker {worker.index} of {worker.count}: "
    if todo:
        log(f"prepare: {who}tokenizing {len(todo)} of {len(plan)} work units")
    bar = tqdm(total=len(todo), unit="unit", desc="tokenize", disable=not sys.stderr.isatty(), file=sys.stderr)
    done, busy = 0, []
    for unit in todo:
        with _claim(work, unit) as ours:
            if not ours:
                busy.append(unit)
                continue
            if unit_plan.finished(work, unit) is not None:  # finished by another process meanwhile
                continue
            try:
                record = tokenize_unit(cfg, unit, tok, eot, dtype, work, bar)
            except BaseException:
                drop_partial(work, unit)
                raise
            unit_plan.save_record(work, unit, record)
            done += 1
    bar.close()
    if busy:
        log(f"prepare: {who}{len(busy)} work units are being tokenized by another process")
    return done, busy


def drop_partial(work: Path, unit: Unit) -> None:
    for p in work.glob(f"*{unit.prefix}-*.bin"):
        p.unlink(missing_ok=True)


def wait_for_units(work: Path, plan: list[Unit], log) -> None:
    said = False
    while left := unit_plan.unfinished(work, plan):
        if not said:
            log(f"prepare: waiting for the other workers ({len(left)} of {len(plan)} units unfinished)")
            said = True
        time.sleep(POLL_S)


def refuse_unfinished(work: Path, plan: list[Unit], worker: Worker) -> None:
    left = unit_plan.unfinished(work, plan)
    if left:
        own = unit_plan.owners(plan, worker.count)
        shown = ", ".join(f"{u.describe()} [worker {own[u.index]}]" for u in left[:5])
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        raise DataError(f"{work.parent}: {len(left)} of {len(plan)} work units are unfinished: {shown}{more}; run "
                        f"`tst prepare RECIPE --worker I --workers {worker.count}` for their workers, then --merge")


def records(work: Path, plan: list[Unit]) -> list[dict]:
    return [unit_plan.finished(work, u) for u in plan]


def install(data_dir: Path, work: Path, manifest: dict) -> None:
    """Replace the previous preparation with the work directory's shards and tokenizer. Safe to repeat after a crash
    at any point: the old manifest goes first (never a manifest over mixed files), only files the new manifest does
    not name are deleted, shards already moved stay, the tokenizer is copied (the work directory keeps its own until
    the end), and the work directory goes last."""
    (data_dir / shards.MANIFEST).unlink(missing_ok=True)
    named = {x["file"] for split in manifest["splits"].values() for x in split["shards"]}
    for old in list(data_dir.glob("train-*.bin")) + list(data_dir.glob("val-*.bin")):
        if old.name not in named or (work / old.name).exists():
            old.unlink()
    shutil.rmtree(data_dir / "packs", ignore_errors=True)
    for p in work.glob("*.bin"):
        p.replace(data_dir / p.name)
    with replacing(data_dir / "tokenizer.json") as tmp:
        shutil.copyfile(work / "tokenizer.json", tmp)
    write_json_atomic(data_dir / shards.MANIFEST, manifest)
    shutil.rmtree(work, ignore_errors=True)
