"""The short summary printed at the end of train and resume."""
from __future__ import annotations


def summary_lines(res: dict) -> list[str]:
    val = res["final_val_loss"]
    return [
        f"run: {res['run_dir']} ({res['steps']} steps, checkpoint {res['checkpoint']})",
        f"final held-out loss: {val:.4f}" if val is not None else "final held-out loss: n/a",
        f"tokens read: phase 1 {res['tokens_phase1']:,}, phase 2 {res['tokens_phase2']:,} "
        f"({res['positions']:,} positions, {res['flops']:.3e} FLOPs)",
        f"wall time: {res['wall_time_s']:.1f} s",
    ]
