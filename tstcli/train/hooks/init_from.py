"""`model.init_from`: a fresh run starts from another model's weights instead of random ones, loaded on every rank
into its own shards before anything else reads the model (the step-0 evaluation among them). A resume restores its
checkpoint instead and loads nothing."""
from __future__ import annotations

from tstcli.parallel.world import assign_state
from tstcli.run import init_from
from tstcli.train.hooks import Hook


class InitFrom(Hook):
    priority = 35  # after signals are caught and the console is up; before the step-0 evaluation

    def __init__(self, source: str):
        self.source = source

    def on_start(self, t) -> None:
        if t.resumed_from is not None:
            return
        full, where = init_from.weights(self.source)
        assign_state(t.model, full)
        t.say(f"init: weights from {where}")
