"""`tst compare RUN_DIR RUN_DIR ...`: held-out loss against compute, and the equal-loss speed-up."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tstcli.cli.common import JsonOption, emit, log
from tstcli.compare.curves import AXES, VAL_LOSS, compare, load_curve
from tstcli.compare.plot import check_out
from tstcli.errors import UsageError


def _fmt(x, axis: str) -> str:
    if x is None:
        return "never"
    return f"{x:,.0f}" if axis == "steps" else f"{x:.1f}" if axis == "time" else f"{x:.3e}"


def compare_runs(
    run_dirs: List[Path] = typer.Argument(..., help="run directories; the first is the reference unless --reference"),
    x: str = typer.Option("flops", "--x", help="x axis: flops, tokens (raw tokens read), steps or time"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the plot here (.png, .svg or .pdf; needs tst[plot])"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="the run whose final value is the target"),
    metric: str = typer.Option(VAL_LOSS, "--metric", help="val_loss (held-out loss), or an in-loop benchmark score "
                               "TASK.METRIC, e.g. hellaswag.acc_norm (recipe key eval.bench)"),
    json_: bool = JsonOption,
):
    """Plot and tabulate held-out loss (or a benchmark score) of runs against compute; equal-quality speed-up."""
    if x not in AXES:
        raise UsageError(f"--x {x!r}: expected one of {', '.join(AXES)}")
    if metric != VAL_LOSS and "." not in metric:
        raise UsageError(f"--metric {metric!r}: expected val_loss or TASK.METRIC, e.g. hellaswag.acc_norm")
    if out is not None:
        check_out(out)
    curves = [load_curve(Path(d), metric) for d in run_dirs]
    ref = 0
    if reference is not None:
        names = [Path(d).resolve() for d in run_dirs]
        if Path(reference).resolve() not in names:
            raise UsageError(f"--reference {reference}: not one of the compared run directories")
        ref = names.index(Path(reference).resolve())
    result = compare(curves, x, ref)
    label = AXES[x][1]
    what = "held-out loss" if metric == VAL_LOSS else metric
    lines = [f"reference: {result['reference']} (final {what} {result['target_loss']:.4f}); x axis: {label}",
             f"{'run':<24} {'setting':<22} {'final':>10} {label + ' at end':>16} "
             f"{label + ' to ref':>16} {'speed-up':>9}"]
    for r in result["runs"]:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"{r['run'][:24]:<24} {r['label'][:22]:<22} {r['final_val_loss']:>10.4f} "
                     f"{_fmt(r['final_x'], x):>16} {_fmt(r['reach_x'], x):>16} {speed:>9}")
    if out is not None:
        result["plot"] = str(out)
    emit(result, json_, lines)  # the table first: it needs nothing, the plot needs matplotlib
    if out is not None:
        from tstcli.compare.plot import plot

        plot(curves, result, out, what)
        log(f"compare: plot written to {out}")
