"""The optimizer and the learning rate of a step: AdamW, and the schedule as a pure function of the step."""
from __future__ import annotations

import torch

from tstcli.recipe import Recipe, TrainConfig
from tstcli.train.schedule import lr_factor


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norm gains)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)


def lr_at(r: Recipe, step: int) -> float:
    """Learning rate of optimizer step `step` (1-based): one schedule through both phases, or restarted at the
    switch under the `tst.restart_schedule` ablation."""
    t, n1 = r.train, r.phase1_steps
    if r.tst.restart_schedule and step > n1 > 0:
        step, total = step - n1, t.steps - n1
    else:
        total = t.steps
    return t.lr * lr_factor(step, total, t.warmup_steps, t.schedule, t.decay_fraction, t.min_lr_ratio)
