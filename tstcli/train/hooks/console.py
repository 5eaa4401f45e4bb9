"""What the user sees on stderr: a tqdm bar on a terminal, plain lines every `train.log_every` steps otherwise
(CI, cluster logs), both with elapsed time and an ETA; held-out losses, benchmark scores and messages as lines."""
from __future__ import annotations

import sys

from tqdm import tqdm

from tstcli.train.hooks import Hook


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Eta:
    """Time left, from steady-state steps only: the first step of each phase in this process (which builds a
    torch.compile graph) is left out of the average. Intervals between the rows' `elapsed_s` (when each step ran,
    not when its row arrived: rows are read in bursts) include what the hooks did between steps (validation,
    checkpoints), so those are averaged in."""

    def __init__(self):
        self.phases: set[int] = set()
        self.total, self.count = 0.0, 0
        self.last: float | None = None

    def update(self, phase: int, now: float) -> None:
        if self.last is not None and phase in self.phases:
            self.total += now - self.last
            self.count += 1
        self.phases.add(phase)
        self.last = now

    def left(self, steps: int) -> float | None:
        return self.total / self.count * steps if self.count else None


class Console(Hook):
    priority = 30  # after the metrics log and trackers

    def __init__(self, total_steps: int, log_every: int, tty: bool | None = None):
        self.total, self.log_every = total_steps, log_every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        self.eta = Eta()
        self.epochs: dict[int, int] = {}
        self.post: dict = {}

    def on_start(self, t) -> None:
        if self.tty:
            self.bar = tqdm(total=self.total, initial=t.state.step, desc="train", unit="step", file=sys.stderr,
                            dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                                           "[{elapsed}{postfix}]")

    def on_message(self, t, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def on_row(self, t, row: dict) -> None:
        kind, step = row["kind"], row["step"]
        if kind == "train":
            self._train(t, row)
        elif kind == "val":
            self.post["val"] = f"{row['val_loss']:.4f}"
            self.on_message(t, f"step {step} val_loss {row['val_loss']:.4f} ({row['val_tokens']:,} held-out tokens, "
                               f"{row['val_share']:.1%} of the validation split)")
        elif kind == "bench":
            scores = ", ".join(f"{m} {row[m]:.4f}" for m in ("acc", "acc_norm") if m in row)
            self.on_message(t, f"step {step} bench {row['task']}: {scores} (n={row['n']})")
        elif kind == "checkpoint":
            how = "written in the background" if row["async"] else "written"
            self.on_message(t, f"step {step} checkpoint complete: training stood still {row['blocking_s']:.2f} s, "
                               f"{how} in {row['total_s']:.2f} s")
        elif kind == "skip":
            self.on_message(t, f"step {step} (phase {row['phase']}): non-finite loss {row['loss']} / grad norm "
                               f"{row['grad_norm']}: update skipped ({row['skipped_total']} skipped so far)")

    def _train(self, t, row: dict) -> None:
        step, phase = row["step"], row["phase"]
        self.eta.update(phase, row["elapsed_s"])  # when the step ran: rows arrive in bursts, every log_every steps
        if phase in self.epochs and row["epoch"] > self.epochs[phase]:
            self.on_message(t, f"phase {phase}: its rows are exhausted at step {step}; epoch {row['epoch'] + 1} "
                               "re-reads them in a new order (the corpus repeats)")
        self.epochs[phase] = row["epoch"]
        left = self.eta.left(self.total - step)
        eta = duration(left) if left is not None else "?"
        if self.bar is not None:
            self.post.update({"phase": phase, "loss": f"{row['loss']:.4f}", "tok/s": f"{row['tokens_per_s']:.0f}",
                              "eta": eta})
            self.bar.set_postfix(self.post, refresh=False)
            self.bar.update(1)
        elif step % self.log_every == 0 or step == self.total:
            mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "unknown"
            print(f"step {step}/{self.total} phase {phase} loss {row['loss']:.4f} lr {row['lr']:.3g} "
                  f"grad_norm {row['grad_norm']:.3f} tok/s {row['tokens_per_s']:.0f} pos/s {row['positions_per_s']:.0f} "
                  f"mfu {mfu} data {100 * row['data_share']:.1f}% elapsed {duration(row['elapsed_s'])} eta {eta}",
                  file=sys.stderr, flush=True)

    def on_close(self, t) -> None:
        if self.bar is not None:
            self.bar.close()
