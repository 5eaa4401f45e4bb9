"""SIGTERM, Ctrl-C, SIGHUP (a closed SSH session) and SIGUSR1 (SLURM's warning before pre-emption,
`--signal=USR1@90`) ask the run to stop (`t.stop.request`: this rank's vote; under torchrun the ranks agree one
step later, without waiting on the device), every rank finishes the step, the checkpoint hook saves, and the loop
stops (exit 128 + signal). A second signal stops at once."""
from __future__ import annotations

import os
import signal

from tstcli.train.hooks import Hook

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def ignore_from_now() -> None:
    """The run is finished and saved: a signal from here on (a scheduler's late SIGTERM, a closing terminal) must not
    turn it into a failed one (exit 128 + signal) while the process winds down and prints its summary."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class SignalStop(Hook):
    priority = 32  # signals are caught before anything long runs

    def __init__(self):
        self._old: dict = {}

    def on_start(self, t) -> None:
        def handler(signum, _frame):
            if not t.stop.request(signum):  # second signal: stop now, the last checkpoint is intact
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        self._old = {s: signal.signal(s, handler) for s in SIGNALS}

    def on_close(self, t) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
