"""Checkpoints every `checkpoint.every` steps, at the end, and when the ranks agreed to stop (a signal); keeps the
newest `checkpoint.keep`."""
from __future__ import annotations

from tstcli.recipe import to_toml
from tstcli.run import checkpoint, rundir
from tstcli.train.hooks import Hook


class Checkpointing(Hook):
    def __init__(self, every: int, keep: int, last_step: int):
        self.every, self.keep, self.last_step = every, keep, last_step

    def should_save(self, t, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step or t.stop_agreed

    def after_step(self, t, step: int) -> None:
        if t.stop_signal is not None and not t.world.distributed:
            # One process needs no agreement: a signal during this step's side jobs (the held-out evaluation runs
            # just before this hook) stops here, not after another step and a second save.
            t.stop_agreed = True
        if self.should_save(t, step):
            self.save(t, step)

    def save(self, t, step: int) -> None:
        t.flush()  # the rows of every step up to this one are written before the checkpoint names the step
        t.hooks.before_save(t, step)
        root = t.run_dir / rundir.CHECKPOINTS
        checkpoint.save(root, step, t.model, t.optimizer, t.checkpoint_state(), to_toml(t.r), t.world)
        if t.world.main:
            checkpoint.prune(root, self.keep)
