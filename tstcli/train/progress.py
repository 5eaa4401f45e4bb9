"""Progress on stderr: a tqdm bar on a terminal, plain periodic lines otherwise (CI, cluster logs)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, start: int, log_every: int, quiet: bool = False):
        self.tty = sys.stderr.isatty() and not quiet
        self.log_every, self.quiet = log_every, quiet
        self.val = None
        self._post: dict = {}
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                        dynamic_ncols=True) if self.tty else None

    def set_position(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, row: dict) -> None:
        if self.bar is not None:
            self._post.update({"phase": row["phase"], "loss": f"{row['loss']:.4f}",
                               "tok/s": f"{row['tokens_per_s']:.0f}"})
            self.bar.set_postfix(self._post, refresh=False)
            self.bar.update(1)
        elif not self.quiet and (row["step"] % self.log_every == 0 or row.get("last")):
            val = f" val {self.val:.4f}" if self.val is not None else ""
            mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "unknown"
            print(f"step {row['step']} phase {row['phase']} loss {row['loss']:.4f}{val} lr {row['lr']:.3g} "
                  f"grad_norm {row['grad_norm']:.3f} tok/s {row['tokens_per_s']:.0f} "
                  f"pos/s {row['positions_per_s']:.0f} mfu {mfu} data {100 * row['data_share']:.1f}%",
                  file=sys.stderr, flush=True)

    def validation(self, step: int, val_loss: float) -> None:
        self.val = val_loss
        if self.bar is not None:
            self._post["val"] = f"{val_loss:.4f}"
            self.bar.set_postfix(self._post)
        else:
            self.message(f"step {step} val_loss {val_loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
