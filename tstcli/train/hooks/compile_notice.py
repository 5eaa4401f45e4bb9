"""Says why the terminal goes quiet: the first step of each phase compiles it with torch.compile (once per phase and
process; tens of seconds on a CPU), and how long that step took."""
from __future__ import annotations

import time

from tstcli.train.hooks import Hook


class CompileNotice(Hook):
    priority = 40

    def __init__(self):
        self._started: float | None = None

    def before_step(self, t, step: int) -> None:
        phase = t.plan.phase_at(step)
        if t.engine.compiles and not t.engine.built(phase):
            self._started = time.perf_counter()
            t.say(f"compiling the phase-{phase} step with torch.compile (once per phase and process; "
                  "tens of seconds on a CPU)...")

    def after_backward(self, t, step: int) -> None:
        if self._started is not None:
            t.say(f"phase-{t.plan.phase_at(step)} step compiled and run in {time.perf_counter() - self._started:.1f} s")
            self._started = None
