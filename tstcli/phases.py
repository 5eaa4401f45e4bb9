"""The phase plan: how a run's steps split into phases and what one row of each phase is — the one place this is
computed (docs/design.md, "The method"). `Recipe.plan` builds it once; packing, the loader, the loss specs, the
objective, the schedule, the dry run and the hooks take the plan, never re-derive it. Free of torch: `tst prepare`
reads it without importing torch. The bags themselves are made in `tst/bags.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PhaseSpec:
    mode: str  # "full" | "input" | "output" | "ntp"
    bag_size: int
    seq_len: int

    @classmethod
    def next_token(cls, seq_len: int) -> "PhaseSpec":
        return cls("ntp", 1, seq_len)

    @property
    def input_width(self) -> int:
        """Token ids averaged into one latent position (k): s for full and input, 1 otherwise."""
        return self.bag_size if self.mode in ("full", "input") else 1

    @property
    def target_width(self) -> int:
        """Tokens each position predicts (m): s for full and output, 1 otherwise."""
        return 1 if self.mode in ("input", "ntp") else self.bag_size

    @property
    def spans(self) -> int:
        """Consecutive spans of L+1 tokens one row of this phase covers: s for full and input, the fewest covering
        L+s tokens for output, 1 for next-token rows."""
        s, L = self.bag_size, self.seq_len
        if self.mode in ("full", "input"):
            return s
        return math.ceil((L + s) / (L + 1)) if self.mode == "output" else 1

    @property
    def row_width(self) -> int:
        """Tokens in one row of this phase."""
        return self.spans * (self.seq_len + 1)


@dataclass(frozen=True)
class PhasePlan:
    """Steps 1 … `phase1_steps` are phase 1 (superposition, `phase1`'s geometry), the rest phase 2 (next-token
    rows of L+1). Every held-out evaluation scores `heldout_count` next-token rows. The phases and the rows they
    read are those of `steps`; training stops after `last_step` (an anneal ends before `steps`)."""
    steps: int  # optimizer steps in all
    phase1_steps: int  # n1 = round(tst.ratio x train.steps)
    batch_size: int  # global rows per step
    phase1: PhaseSpec
    heldout_count: int  # rows every held-out evaluation scores (eval.batches x train.batch_size)
    last_step: int  # where training ends: `steps`, or an anneal's step + decay steps (the data plan stays `steps`)

    @classmethod
    def of(cls, r) -> "PhasePlan":
        """The plan of a `Recipe` (not imported: the recipe imports this module to offer `Recipe.plan`)."""
        t = r.train
        last = r.anneal.step + r.anneal.decay_steps if r.anneal.step else t.steps
        return cls(t.steps, round(r.tst.ratio * t.steps), t.batch_size, PhaseSpec(r.tst.mode, r.tst.bag_size,
                                                                                    t.seq_len),
                   r.eval.batches * t.batch_size, last)

    @property
    def seq_len(self) -> int:
        return self.phase1.seq_len

    @property
    def specs(self) -> dict[int, PhaseSpec]:
        return {1: self.phase1, 2: self.heldout}

    @property
    def heldout(self) -> PhaseSpec:
        """Held-out rows, like phase 2's: next-token rows of L+1 tokens, in every phase."""
        return PhaseSpec.next_token(self.seq_len)

    @property
    def phase_steps(self) -> dict[int, int]:
        return {1: self.phase1_steps, 2: self.steps - self.phase1_steps}

    @property
    def row_widths(self) -> dict[int, int]:
        return {p: spec.row_width for p, spec in self.specs.items()}

    @property
    def rows_needed(self) -> dict[int, int]:
        """Rows each phase reads over the run (its steps x the global batch)."""
        return {p: n * self.batch_size for p, n in self.phase_steps.items()}

    @property
    def switch_step(self) -> int | None:
        """The first next-token step, where the switch happens; None when a phase is empty (no switch)."""
        return self.phase1_steps + 1 if 0 < self.phase1_steps < self.steps else None

    def phase_at(self, step: int) -> int:
        """Phase of optimizer step `step` (1-based)."""
        return 1 if step <= self.phase1_steps else 2

    def step_in_phase(self, step: int) -> int:
        """0-based index of optimizer step `step` (1-based) within its phase."""
        return step - 1 if step <= self.phase1_steps else step - 1 - self.phase1_steps

    def check_rows(self, phase: int, shape: tuple) -> None:
        """A batch of phase `phase` must be rows of that phase's width: anything else would be scored as other
        tokens without an error (a view of the wrong width still reshapes)."""
        want = self.specs[phase].row_width
        if len(shape) != 2 or shape[1] != want:
            raise ValueError(f"phase {phase}: a batch of shape {tuple(shape)}, but the phase plan's rows are {want} "
                             "tokens wide")
