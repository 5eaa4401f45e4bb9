"""The one place a run's stop is decided. A signal asks this rank to stop (`request`); the ranks agree after a step
(`vote`: under torchrun an asynchronous all-reduce on a CPU group, read at the next step, so no rank waits for the
device); a single process needs no agreement and `settle`s at once where a save is decided, so a signal that came
during the step's side jobs stops at this step. The loop and the hooks read the outcome as `Trainer.stopping`."""
from __future__ import annotations

from tstcli.parallel.world import StopVote, World


class StopController:
    def __init__(self, world: World, timeout_s: float):
        self._vote = StopVote(world, timeout_s)
        self._single = not world.distributed
        self.signal: int | None = None  # the first signal this rank received
        self.agreed = False  # every rank saves and stops after the current step

    def request(self, signum: int) -> bool:
        """A signal asks this rank to stop; False when one already had (the caller then stops at once)."""
        if self.signal is not None:
            return False
        self.signal = signum
        return True

    def vote(self) -> None:
        """After each step: this rank's vote; latches the agreement of all ranks."""
        self.agreed = self._vote.cast(self.signal is not None) or self.agreed

    def settle(self) -> None:
        """Where a save is decided: in one process a signal received so far is agreed at once."""
        if self._single and self.signal is not None:
            self.agreed = True

    def close(self) -> None:
        self._vote.close()
