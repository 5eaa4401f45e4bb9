"""The phase switch: from superposition to next-token training. By default nothing changes but the rows and the
loss (model, optimizer state and schedule carry through); the paper's ablations re-initialise the embedding or
the head, or reset the optimizer, here."""
from __future__ import annotations

import torch

from tstcli.parallel.world import assign_full
from tstcli.train.hooks import Hook


class PhaseSwitch(Hook):
    priority = 38  # the switch before the first phase-2 step's other side jobs

    def before_step(self, t, step: int) -> None:
        if step == t.plan.switch_step:
            self.apply(t)

    def apply(self, t) -> None:
        r = t.r
        g = torch.Generator().manual_seed(r.run.seed + 1)
        for wanted, param in ((r.tst.reinit_embedding, t.model.tok_embeddings.weight),
                              (r.tst.reinit_head, t.model.output.weight)):
            if wanted:  # drawn in full on the CPU, so the values do not depend on the device or the sharding
                assign_full(param, torch.empty(param.shape).normal_(0.0, r.model.init_std, generator=g))
        if r.tst.reset_optimizer:
            t.reset_optimizer()
        t.say(f"switch: phase 1 -> phase 2 at step {t.plan.switch_step} (next-token training from here)")
