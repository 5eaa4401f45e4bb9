"""Work units of a preparation: the inputs cut into pieces that workers tokenize independently.

A unit is a run of consecutive source files of about `data.unit_mb` MB, one larger file, or a range of row groups
of a large Parquet file. The list depends on the inputs only
(files in recipe order, Parquet footers), never on the number of workers, and each unit's tokens go to shards of its
own (`train-[ENTRY-]uNNNNNN-KKKKK.bin`): so the prepared data is the same whatever the number of workers. The units
are dealt to the workers by size (`owners`), so that each reads about as many bytes; a unit is finished when its record (`units/uNNNNNN.json`) exists in the
work directory, written after its shards are on disk.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tstcli.files import write_json_atomic
from tstcli.prep import readers
from tstcli.prep.sources import SourceFile

UNIT_BYTES = 256 * 10 ** 6  # the default of data.unit_mb
RECORDS = "units"


@dataclass(frozen=True)
class Unit:
    index: int
    entry: str | None  # mixture entry name, None without a mixture
    files: tuple[SourceFile, ...]  # consecutive files of one entry, read in order
    row_groups: tuple[int, int] | None = None  # [a, b) of a single Parquet file; None: the whole files
    size: int = 0  # bytes to read: what balances the workers' shares

    @property
    def name(self) -> str:
        return f"u{self.index:06d}"

    @property
    def prefix(self) -> str:
        """The start of its shards' names, after the split: `-dclm-u000012` or `-u000012`."""
        return ("" if self.entry is None else f"-{self.entry}") + f"-{self.name}"

    @property
    def identity(self) -> dict:
        """What a finished unit's record must match: the same files (by origin) and row groups."""
        return {"origins": [f.origin for f in self.files], "row_groups": list(self.row_groups or []) or None}

    def describe(self) -> str:
        part = f" row groups {self.row_groups[0]}..{self.row_groups[1] - 1}" if self.row_groups else ""
        more = f" and {len(self.files) - 1} more files" if len(self.files) > 1 else ""
        return f"{self.name} ({self.files[0].origin}{part}{more})"


def _row_group_ranges(sizes: list[int], target: int) -> list[tuple[int, int]]:
    ranges, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        held += size
        if held >= target:
            ranges.append((start, i + 1))
            start, held = i + 1, 0
    if start < len(sizes) or not ranges:
        ranges.append((start, len(sizes)))
    return ranges


def plan(groups: list[tuple[str | None, list[SourceFile]]], unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """The units of a preparation, in the order their shards are listed in the manifest: consecutive small files of
    an entry together up to about `unit_bytes` (a unit's last partial chunk is not trained on, so units must not be
    tiny), a larger file alone, a large local Parquet file cut into row-group ranges."""
    units: list[Unit] = []
    for entry, files in groups:
        pending: list[SourceFile] = []

        def flush() -> None:
            if pending:
                units.append(Unit(len(units), entry, tuple(pending), None, sum(f.size for f in pending)))
                pending.clear()

        for f in files:
            if f.local and f.path.endswith(readers.PARQUET) and f.size > unit_bytes:
                flush()
                sizes = readers.parquet_row_groups(f.path, f.origin)
                for a, b in _row_group_ranges(sizes, unit_bytes):
                    units.append(Unit(len(units), entry, (f,), (a, b), sum(sizes[a:b])))
                continue
            if pending and sum(p.size for p in pending) + f.size > unit_bytes:
                flush()
            pending.append(f)
        flush()
    return units


def owners(units: list[Unit], workers: int) -> list[int]:
    """The worker of each unit: largest units first, each to the worker with the fewest bytes so far (ties to the
    lowest index). Deterministic in the units and the number of workers, and balanced when files differ in size."""
    load = [0] * workers
    out = [0] * len(units)
    for u in sorted(units, key=lambda u: (-u.size, u.index)):
        w = min(range(workers), key=lambda k: (load[k], k))
        out[u.index] = w
        load[w] += u.size
    return out


def mine(units: list[Unit], worker: int, workers: int) -> list[Unit]:
    own = owners(units, workers)
    return [u for u in units if own[u.index] == worker]


def record_path(work: Path, unit: Unit) -> Path:
    return work / RECORDS / f"{unit.name}.json"


def finished(work: Path, unit: Unit) -> dict | None:
    """The unit's record if it is finished (its shards are then complete on disk), else None. A record of other
    files (a plan that changed under the same name) does not count."""
    try:
        record = json.loads(record_path(work, unit).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("identity") == unit.identity else None


def save_record(work: Path, unit: Unit, record: dict) -> None:
    (work / RECORDS).mkdir(exist_ok=True)
    write_json_atomic(record_path(work, unit), record)


def unfinished(work: Path, units: list[Unit]) -> list[Unit]:
    return [u for u in units if finished(work, u) is None]
