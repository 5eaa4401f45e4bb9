"""Learning-rate schedules as pure functions of the 1-based step: nothing to checkpoint."""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str, decay_fraction: float, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` of `total` (1-based)."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if kind == "wsd":
        decay_steps = round(decay_fraction * total)
        decay_start = total - decay_steps
        if decay_steps == 0 or step <= decay_start:
            return 1.0
        progress = (step - decay_start) / (decay_steps + 1)  # never reaches 0: the last step still learns
        return 1.0 - (1.0 - min_ratio) * progress
    span = max(total - warmup, 1)
    progress = (step - warmup) / (span + 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
