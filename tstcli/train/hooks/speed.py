"""Throughput and model FLOPs utilisation of each train row: tokens and positions per second of the whole job, and
MFU per device against the peak of the dtype the run computes in (None where the peak is unknown). The trainer
times the step (`step_time_s`); this hook owns what is derived from it and the device's peak."""
from __future__ import annotations

from tstcli.train import hardware
from tstcli.train.hooks import Hook


class Speed(Hook):
    priority = 0  # completes a row before anything writes it

    def __init__(self):
        self.peak: float | None = None
        self.device_name = ""

    def on_start(self, t) -> None:
        # On a CPU the peak is measured (a second of matmuls) once per process.
        self.device_name, self.peak = hardware.peak_flops(t.device, t.amp is not None)

    def complete_row(self, t, row: dict) -> None:
        dt, B, plan = row["step_time_s"], t.plan.batch_size, t.plan
        positions = B * plan.seq_len
        row.update(tokens_per_s=B * plan.row_widths[row["phase"]] / dt, positions_per_s=positions / dt,
                   mfu=(t.flops_per_position * positions / dt / (self.peak * t.world.size) if self.peak else None))
