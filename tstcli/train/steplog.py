"""The metrics rows of steps whose scalars are still on the device.

A step leaves its loss, gradient norm, model metrics and "finite?" flag on the device; reading them each step would
make the host wait for the GPU every step. They wait here instead and are read together, in one transfer, every
`train.log_every` steps (and before anything else is logged or saved). The host's own figures of a step (tokens,
timings) are kept with them, so each step still gets its row, identical to one read at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class StepResult:
    """One optimizer step as the device left it."""
    phase: int
    epoch: int
    data_s: float  # seconds spent fetching rows
    lr: float  # the step's learning rate (applied only if `ok`)
    loss: torch.Tensor  # mean over micro-batches and ranks
    grad_norm: torch.Tensor
    metrics: dict  # the model's own metrics (name -> tensor), averaged; a vector metric as _min and _max
    ok: torch.Tensor  # loss and gradient norm finite: the update was applied


@dataclass
class Read:
    """A pending step with its device scalars read."""
    step: int
    out: StepResult
    host: dict  # what the host knew at the step (counters, timings)
    loss: float
    grad_norm: float
    ok: bool
    metrics: dict
    wait_s: float  # this step's share of the time the read waited for the device


class StepLog:
    def __init__(self):
        self._pending: list[tuple[int, StepResult, dict]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, step: int, out: StepResult, host: dict) -> None:
        self._pending.append((step, out, host))

    def read(self) -> list[Read]:
        """Every pending step, read from the device in one transfer, oldest first."""
        if not self._pending:
            return []
        names = [sorted(out.metrics) for _, out, _ in self._pending]
        parts = [torch.stack([out.loss.double(), out.grad_norm.double(), out.ok.double(),
                              *(out.metrics[n].double() for n in ns)]) for (_, out, _), ns in zip(self._pending, names)]
        t0 = time.perf_counter()
        values = torch.cat(parts).tolist()  # the one host read (waits for the device to reach the last step)
        wait = (time.perf_counter() - t0) / len(self._pending)
        reads, pos = [], 0
        for (step, out, host), ns in zip(self._pending, names):
            loss, gn, ok, *rest = values[pos:pos + 3 + len(ns)]
            pos += 3 + len(ns)
            reads.append(Read(step, out, host, loss, gn, ok > 0, dict(zip(ns, rest)), wait))
        self._pending.clear()
        return reads
