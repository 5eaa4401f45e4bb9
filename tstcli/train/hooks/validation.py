"""Held-out validation: ordinary next-token loss at step 0, every `eval.every` steps, at the switch and at the end,
written as `kind = "val"` rows."""
from __future__ import annotations

from tstcli.train.hooks import Hook


class Validation(Hook):
    priority = 60  # after the step (and the switch), before benchmarks and the checkpoint

    def __init__(self, every: int, switch_step: int, last_step: int):
        self.every, self.switch_step, self.last_step = every, switch_step, last_step

    def should_validate(self, step: int) -> bool:
        return step % self.every == 0 or step == self.switch_step or step == self.last_step

    def on_start(self, t) -> None:
        self.share = t.data.heldout_share(t.r)  # of the validation split, drawn evenly across it
        if t.state.step == 0:
            self.validate(t, 0)

    def after_step(self, t, step: int) -> None:
        if self.should_validate(step):
            self.validate(t, step)

    def validate(self, t, step: int) -> None:
        h = t.heldout()
        t.record_val(h.val_loss)
        t.emit({"kind": "val", "step": step, "phase": t.plan.phase_at(max(step, 1)), "val_loss": h.val_loss,
                "val_tokens": h.tokens, "val_share": self.share, "elapsed_s": t.elapsed()})
