"""Writes every row to the run's `metrics.jsonl` (rank 0), durable before each checkpoint."""
from __future__ import annotations

from tstcli.run import metrics
from tstcli.train.hooks import Hook


class MetricsLog(Hook):
    priority = 10  # rows reach the log first

    def __init__(self):
        self.writer: metrics.MetricsWriter | None = None

    def on_start(self, t) -> None:
        # Rows logged after the checkpoint (or, with none, by a run killed before its first) are replayed.
        metrics.truncate(t.run_dir, t.state.step if t.resumed_from is not None else -1)
        self.writer = metrics.MetricsWriter(t.run_dir)

    def on_row(self, t, row: dict) -> None:
        self.writer.write(row)

    def before_save(self, t, step: int) -> None:
        self.writer.sync()

    def on_close(self, t) -> None:
        if self.writer is not None:
            self.writer.close()
