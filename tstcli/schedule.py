"""Learning-rate schedules as pure functions of the 1-based step: nothing to checkpoint. `Schedule.of(recipe)` is
the one place a run's schedule is read from its recipe (warmup, the WSD decay window and shape, an anneal's decay,
the restart-at-switch ablation); every optimizer's learning rate is its peak times `Schedule.factor(step)`."""
from __future__ import annotations

import math
from dataclasses import dataclass

# 1 at the decay's start, 0 at its end: `progress` in [0, 1). `sqrt` is 1 − √t (Hägele et al. 2024, "Scaling Laws
# and Compute-Optimal Training Beyond Fixed Training Durations"; OLMo-core's WSD decay options).
DECAY_SHAPES = {
    "linear": lambda progress: 1.0 - progress,
    "sqrt": lambda progress: 1.0 - math.sqrt(progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def decay_factor(shape: str, progress: float, min_ratio: float) -> float:
    """From 1 down towards `min_ratio` along `shape`. The linear form is written as it always was, so runs made
    before the shapes existed keep their learning rates bit for bit."""
    if shape == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * DECAY_SHAPES[shape](progress)


def wsd_window(total: int, decay_fraction: float) -> tuple[int, int]:
    """(start, steps) of a WSD decay over the last `decay_fraction` of `total` steps: steps start+1 … total."""
    decay_steps = round(decay_fraction * total)
    return total - decay_steps, decay_steps


def lr_factor(step: int, total: int, warmup: int, kind: str, decay_fraction: float, min_ratio: float,
              shape: str = "linear", decay_window: tuple[int, int] | None = None) -> float:
    """Multiplier of the peak LR at optimizer step `step` of `total` (1-based). WSD decays over the last
    `decay_fraction` of the steps, or over `decay_window` = (start, steps): steps start+1 … start+steps."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if kind == "wsd":
        decay_start, decay_steps = decay_window or wsd_window(total, decay_fraction)
        if decay_steps == 0 or step <= decay_start:
            return 1.0
        progress = (step - decay_start) / (decay_steps + 1)  # never reaches 0: the last step still learns
        return decay_factor(shape, progress, min_ratio)
    span = max(total - warmup, 1)
    progress = (step - warmup) / (span + 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_decay_start(t) -> int:
    """The last step of a WSD run's stable phase (the decay starts after it) for a recipe's `train` table."""
    return wsd_window(t.steps, t.decay_fraction)[0]


@dataclass(frozen=True)
class Schedule:
    total: int
    warmup: int
    kind: str
    decay_fraction: float
    min_ratio: float
    shape: str
    restart_at: int  # phase-1 steps under the `tst.restart_schedule` ablation, else 0
    anneal: tuple[int, int] | None  # (step, decay steps) of an anneal run

    @classmethod
    def of(cls, r) -> "Schedule":
        t, a = r.train, r.anneal
        restart = r.plan.phase1_steps if r.tst.restart_schedule else 0
        return cls(t.steps, t.warmup_steps, t.schedule, t.decay_fraction, t.min_lr_ratio, t.decay_shape, restart,
                   (a.step, a.decay_steps) if a.step else None)

    def factor(self, step: int) -> float:
        """Multiplier of every optimizer's peak learning rate at optimizer step `step` (1-based): one schedule
        through both phases, restarted at the switch under the ablation, or an anneal's decay from its step."""
        total = self.total
        if self.restart_at and step > self.restart_at > 0:
            step, total = step - self.restart_at, total - self.restart_at
        return lr_factor(step, total, self.warmup, self.kind, self.decay_fraction, self.min_ratio, self.shape,
                         self.anneal)
