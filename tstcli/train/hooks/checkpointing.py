"""Checkpoints every `checkpoint.every` steps, at the end, and when the ranks agreed to stop (a signal); keeps the
newest `checkpoint.keep`. With `checkpoint.async` a save stops training only to copy the state to host memory and
the write goes on in the background (`tstcli.run.saver`); the last save of a run, at the end or at a stop, is written
before the run returns. Each save ends as a `checkpoint` row."""
from __future__ import annotations

import time

from tstcli.recipe import to_toml
from tstcli.run import rundir
from tstcli.run.saver import Saver
from tstcli.train.hooks import Hook


class Checkpointing(Hook):
    priority = 80  # last: a checkpoint holds everything its step did

    def __init__(self, every: int, keep: int, last_step: int, background: bool = False):
        self.every, self.keep, self.last_step, self.background = every, keep, last_step, background
        self.saver: Saver | None = None

    def on_start(self, t) -> None:
        self.saver = Saver(t.run_dir / rundir.CHECKPOINTS, t.world, self.keep, self.background,
                           pinned=t.device.type == "cuda", timeout_s=t.r.distributed.timeout_s)

    def should_save(self, t, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step or t.stopping

    def after_step(self, t, step: int) -> None:
        self._rows(t, self.saver.poll())
        # One process needs no agreement: a signal during this step's side jobs (the held-out evaluation, the wait
        # for the previous write) stops here, not after another step and a second save.
        t.stop.settle()
        if self.should_save(t, step):
            self.save(t, step)

    def save(self, t, step: int) -> None:
        t.flush()  # the rows of every step up to this one are written before the checkpoint names the step
        started = time.perf_counter()  # training stands still from here: blocking_s counts the fsync and wait too
        t.hooks.before_save(t, step)
        self._rows(t, self.saver.wait())  # at most one write in flight (a signal may come while we wait)
        t.stop.settle()
        last = step == self.last_step or t.stopping  # nothing may be left in flight when the run returns
        self._rows(t, self.saver.save(step, t.model, t.optimizer.parts, t.checkpoint_state(), to_toml(t.r), wait=last,
                                      started=started))
        t.stop.settle()
        if t.stopping and not last:  # the signal came during the save: stop at this step, its write finished
            self._rows(t, self.saver.wait())

    def on_end(self, t) -> None:
        self._rows(t, self.saver.wait())

    def on_close(self, t) -> None:
        # After an error: let a write in flight finish (it is a good checkpoint, with its row), but the error that
        # stopped the run is the one reported; a failed write is one line more. After on_end nothing is in flight.
        if self.saver is None:
            return
        try:
            rows = self.saver.close()
        except Exception as e:  # noqa: BLE001 - it left no directory behind; the run's own error follows
            t.hooks.on_message(t, f"warning: the checkpoint being written in the background is lost: {e}")
            return
        self._rows(t, rows)

    @staticmethod
    def _rows(t, rows: list[dict]) -> None:
        for row in rows:  # straight to the hooks: rows of earlier steps may still be on the device, that is fine
            t.hooks.on_row(t, row)
