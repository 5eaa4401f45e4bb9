"""The optimizer and the learning rate of a step: AdamW, the schedule as a pure function of the step, and the
update applied only when the step's loss and gradient norm are finite."""
from __future__ import annotations

import torch

from tstcli.phases import PhasePlan
from tstcli.recipe import TrainConfig
from tstcli.train.schedule import lr_factor


def make_optimizer(model: torch.nn.Module, t: TrainConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norm gains). On a GPU the fused kernel: one
    launch per parameter group, and it skips a bad step on the device (`apply_update`). On a CPU torch's default
    implementation, whose numbers every CPU run (and its bitwise resume) was made with. `fused` overrides."""
    params = list(model.parameters())
    if fused is None:
        fused = bool(params) and params[0].device.type == "cuda"
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused or None)


def apply_update(optimizer: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """The optimizer step if `ok` (a boolean scalar tensor) holds, else nothing at all: no moment, counter or
    weight changes. Fused AdamW decides on the device, as for a gradient scaler's overflow (`found_inf`: the kernel
    does nothing and the step counter is set back), so the host never waits for the GPU here. The other
    implementations read `ok` on the host, which costs nothing where they run: on a CPU the device is the host."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~ok).to(torch.float32)
        optimizer.step()
    elif bool(ok):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lr_at(plan: PhasePlan, t: TrainConfig, restart_at_switch: bool, step: int) -> float:
    """Learning rate of optimizer step `step` (1-based): one schedule through both phases, or restarted at the
    switch under the `tst.restart_schedule` ablation."""
    n1 = plan.phase1_steps
    if restart_at_switch and step > n1 > 0:
        step, total = step - n1, t.steps - n1
    else:
        total = t.steps
    return t.lr * lr_factor(step, total, t.warmup_steps, t.schedule, t.decay_fraction, t.min_lr_ratio)
