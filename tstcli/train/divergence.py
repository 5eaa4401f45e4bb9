"""What a step whose loss or gradient norm is not finite does to the run (its update was not applied, decided on
the device): within `train.skip_nonfinite_steps` it is skipped and logged as a `skip` row; past that bound the run
stops with the rows before it written (DivergedError, exit 5), naming the last good checkpoint."""
from __future__ import annotations

from pathlib import Path

from tstcli.errors import DivergedError
from tstcli.run import checkpoint, rundir
from tstcli.train.steplog import Read


class DivergencePolicy:
    def __init__(self, allowed_skips: int, run_dir: Path):
        self.allowed, self.run_dir = allowed_skips, run_dir

    def skipped_after(self, read: Read, skipped: int) -> int:
        """The run's count of skipped steps once the non-finite step `read` is skipped; raises past the bound."""
        if skipped >= self.allowed:
            last = checkpoint.latest(self.run_dir / rundir.CHECKPOINTS)
            raise DivergedError(f"training diverged at step {read.step} (phase {read.out.phase}): loss {read.loss}, "
                                f"grad norm {read.grad_norm}; nothing applied; last good checkpoint: {last or 'none'}")
        return skipped + 1
