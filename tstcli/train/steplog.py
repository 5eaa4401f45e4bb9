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


def row_of(x: Read, phase1_loss: str, skipped_total: int) -> dict:
    """The metrics row of a read step: a `skip` row when it was not finite (nothing applied), else a `train` row
    with the step's figures and timing; `complete_row` hooks add what is derived from them (speed, MFU)."""
    phase, h = x.out.phase, x.host
    if not x.ok:
        return {"kind": "skip", "step": x.step, "phase": phase, "loss": repr(x.loss), "grad_norm": repr(x.grad_norm),
                "skipped_total": skipped_total}
    share = x.metrics.get("scored_share")  # document-aware bags: the loss is a mean over the scored positions
    loss = x.loss / share if share else x.loss
    row = {"kind": "train", "step": x.step, "phase": phase, "loss": loss}
    if phase == 1:
        row[f"{phase1_loss}_loss"] = loss  # mce_loss: mean of s CEs, floor about log s (or bce/hinge_loss)
    # The host's time of the step plus its share of the read's wait: on a GPU the host runs ahead and the wait is
    # where the device's time shows; on a CPU the wait is nil and this is the step's own time.
    dt = h["dt"] + x.wait_s
    row.update(lr=x.out.lr, grad_norm=x.grad_norm, tokens=h["tokens"], positions=h["positions"], flops=h["flops"],
               elapsed_s=h["elapsed_s"], step_time_s=dt, data_share=x.out.data_s / dt, epoch=x.out.epoch,
               **x.metrics)
    if h["mix_tokens"]:
        row["mix_tokens"] = h["mix_tokens"]
    return row
