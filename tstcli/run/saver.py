"""Checkpoints written while training goes on.

A save stops the loop only to copy the state to host memory (DCP's stager); a background thread writes that
copy (`checkpoint.write`: shards, state.json, fsync, the rename that makes it complete) and prunes old ones. All of
`checkpoint`'s guarantees hold: a directory is complete or absent, a crash or kill during a write leaves the previous
checkpoint as the latest, and at most one write is in flight (a save first waits for the one before). Under
torchrun the writers' collectives run on their own CPU process group, apart from the training's.

Each finished save gives a `checkpoint` metrics row (docs/metrics-and-run-dir.md): how long the loop stood still
for it, and how long until it was complete.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.checkpoint.staging import BlockingAsyncStager

from tstcli.parallel.world import World, host_group
from tstcli.recipe import DistributedConfig
from tstcli.run import checkpoint


@dataclass
class _Write:
    step: int
    started: float
    blocking_s: float
    future: Future


class Saver:
    def __init__(self, root: Path, world: World, keep: int, background: bool, pinned: bool = False,
                 timeout_s: float = DistributedConfig.timeout_s):
        """`timeout_s`: how long the background writer's collectives wait for the other ranks (under torchrun)."""
        self.root, self.world, self.keep = Path(root), world, keep
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tst-checkpoint") if background else None
        self._group = host_group(timeout_s) if background and world.distributed else None
        # Pinned staging buffers are kept between saves (fast device-to-host copies); unpinned ones are made anew.
        self._stager = BlockingAsyncStager(cache_staged_state_dict=pinned)
        self._pending: _Write | None = None

    def save(self, step: int, model, optimizer, state: dict, recipe_toml: str, wait: bool = False,
             started: float | None = None) -> list[dict]:
        """Checkpoint `step` (every rank, at the same step). In the background unless `wait` or not `background`.
        Returns the rows of the saves that finished meanwhile (this one's too when it was written here).
        `started`: when the caller stopped training for this save, if before the call (its `blocking_s` counts
        from there: a caller that waited for the previous write itself)."""
        started = time.perf_counter() if started is None else started
        rows = self.wait()  # at most one write in flight
        tmp = checkpoint.begin(self.root, step, model, self.world)
        sd = checkpoint.state_dicts(model, optimizer)
        if self._executor is None or wait:
            self._write(tmp, step, sd, state, recipe_toml, None)
            spent = time.perf_counter() - started
            return rows + [self._row(step, spent, spent, background=False)]
        staged = self._stager.stage(sd)  # the copy training may not touch: the write reads only this
        blocking = time.perf_counter() - started
        future = self._executor.submit(self._write, tmp, step, staged, state, recipe_toml, self._group)
        self._pending = _Write(step, started, blocking, future)
        return rows

    @property
    def writing(self) -> bool:
        """A background write is still going on."""
        return self._pending is not None and not self._pending.future.done()

    def poll(self) -> list[dict]:
        """The row of a background write that has finished (raising its error), without waiting for one."""
        return [] if self.writing else self.wait()

    def wait(self) -> list[dict]:
        """Wait for the write in flight; its row (its error is raised here, as from a save of our own)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        done = pending.future.result()
        return [self._row(pending.step, pending.blocking_s, done - pending.started, background=True)]

    def close(self) -> list[dict]:
        try:
            return self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def _write(self, tmp: Path, step: int, sd: dict, state: dict, recipe_toml: str, group) -> float:
        """Write and prune; returns when the checkpoint was complete."""
        checkpoint.write(tmp, step, sd, state, recipe_toml, self.world, group)
        done = time.perf_counter()
        if self.world.main:
            checkpoint.prune(self.root, self.keep)
        return done

    @staticmethod
    def _row(step: int, blocking_s: float, total_s: float, background: bool) -> dict:
        return {"kind": "checkpoint", "step": step, "blocking_s": blocking_s, "total_s": total_s,
                "async": background}
