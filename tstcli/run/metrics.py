"""The metrics log of a run, `metrics.jsonl`: one JSON object per line, each with a `kind`.

The kinds of row and the fields each carries are `SCHEMA` below; what they mean is documented once, in
docs/metrics-and-run-dir.md (a test holds that page to this schema and to the rows a real run writes). This module is the one writer and the one reader of the file; `tst compare` and the trackers read rows from here.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from tstcli.errors import CheckpointError, as_error, environment_fault
from tstcli.files import write_text_atomic

METRICS = "metrics.jsonl"

TRAIN_FIELDS = ("step", "phase", "loss", "lr", "grad_norm", "tokens", "positions", "flops", "elapsed_s",
                "step_time_s", "tokens_per_s", "positions_per_s", "mfu", "data_share", "epoch")
VAL_FIELDS = ("step", "phase", "val_loss", "val_tokens", "val_share", "elapsed_s")
BENCH_FIELDS = ("step", "task", "n", "acc")
SKIP_FIELDS = ("step", "phase", "loss", "grad_norm", "skipped_total")
CHECKPOINT_FIELDS = ("step", "blocking_s", "total_s", "async")
SCHEMA = {"train": TRAIN_FIELDS, "val": VAL_FIELDS, "bench": BENCH_FIELDS, "skip": SKIP_FIELDS,
          "checkpoint": CHECKPOINT_FIELDS}


def read_rows(run_dir: Path, kind: str | None = None) -> list[dict]:
    """Every row (of `kind`, if given) in file order; a line torn by a kill is skipped."""
    path = Path(run_dir) / METRICS
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and (kind is None or row.get("kind") == kind):
            rows.append(row)
    return rows


def missing_steps(rows: list[dict], last_step: int) -> str:
    """The steps in 1..`last_step` with neither a train nor a skip row, as spans ("3-40, 55"); "" when none. Every
    step writes one of them, and the log is synced before a checkpoint names its step: a gap is a damaged log."""
    logged = {row.get("step") for row in rows if row.get("kind") in ("train", "skip")}
    spans, start = [], None
    for step in range(1, last_step + 2):
        if step <= last_step and step not in logged:
            start = step if start is None else start
        elif start is not None:
            spans.append(f"{start}" if start == step - 1 else f"{start}-{step - 1}")
            start = None
    return ", ".join(spans)


def check_complete(run_dir: Path, last_step: int, why: str) -> None:
    """Refuse (CheckpointError, exit 4) a log that lacks rows of steps 1..`last_step`; `why`: what needs them."""
    path = Path(run_dir) / METRICS
    gaps = missing_steps(read_rows(run_dir) if path.is_file() else [], last_step)
    if gaps:
        raise CheckpointError(f"{path}: {'missing' if not path.is_file() else 'no rows for steps ' + gaps} "
                              f"(the run reached step {last_step}): {why}")


def truncate(run_dir: Path, last_step: int) -> None:
    """Drop rows written after the checkpoint a run resumes from (they are replayed exactly)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = [json.dumps(row) for row in read_rows(run_dir) if row.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class MetricsWriter:
    """Appends rows to `metrics.jsonl`, flushed per row (a reader sees every finished step); `sync` makes them
    durable before a checkpoint names their step."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS
        self._fh = open(self.path, "a")

    def write(self, row: dict) -> None:
        with self._naming_the_file():
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def sync(self) -> None:
        with self._naming_the_file():
            self._fh.flush()
            os.fsync(self._fh.fileno())

    @contextlib.contextmanager
    def _naming_the_file(self):
        """A full disk or a vanished mount while logging: a CheckpointError naming metrics.jsonl (write() names
        no file)."""
        try:
            yield
        except OSError as e:
            if environment_fault(e) is None:
                raise
            raise as_error(e, CheckpointError, "writing the metrics log", path=self.path) from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:  # the write that failed was reported already; closing retries the same buffered bytes
            pass
