"""The counters a training run carries in its checkpoints (with the model, optimizer and RNG state): steps, wall
time, what was read and computed, the last held-out loss, skipped steps."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    positions: int = 0
    flops: int = 0
    tokens_phase: dict = field(default_factory=lambda: {"1": 0, "2": 0})
    val_loss: float | None = None
    skipped: int = 0  # non-finite steps skipped so far (train.skip_nonfinite_steps)
    mix_tokens: dict = field(default_factory=dict)  # raw tokens read so far per data.mix entry name

    def count(self, phase: int, tokens: int, positions: int, flops: int, mix_tokens: dict[str, int]) -> None:
        """A step's raw tokens, positions and FLOPs (they do not depend on the device's outcome)."""
        self.tokens += tokens
        self.tokens_phase[str(phase)] += tokens
        self.positions += positions
        self.flops += flops
        for name, n in mix_tokens.items():
            self.mix_tokens[name] = self.mix_tokens.get(name, 0) + n

    def summary(self) -> dict:
        """The counters as a run's summary reports them."""
        return {"final_val_loss": self.val_loss, "tokens": self.tokens, "tokens_phase1": self.tokens_phase["1"],
                "tokens_phase2": self.tokens_phase["2"], "positions": self.positions, "flops": self.flops}

    def to_checkpoint(self, elapsed_s: float, phase: int) -> dict:
        """What a checkpoint's state.json holds: the counters, the phase and torch's RNG state."""
        return {**asdict(self), "elapsed_s": elapsed_s, "phase": phase, "torch_rng": torch.get_rng_state().tolist()}

    @classmethod
    def from_checkpoint(cls, saved: dict) -> tuple["TrainState", int]:
        """(the counters, the world size that wrote them) from a checkpoint's state; restores torch's RNG state."""
        torch.set_rng_state(torch.tensor(saved["torch_rng"], dtype=torch.uint8))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in saved.items() if k in known}), saved.get("world_size", 1)
