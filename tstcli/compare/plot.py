"""The picture of a comparison: held-out loss against the chosen x axis, one line per run, each run's phase switch
marked, the reference loss drawn across. matplotlib is an optional extra (`pip install 'tst[plot]'`)."""
from __future__ import annotations

from pathlib import Path

from tstcli.compare.curves import AXES, Curve
from tstcli.errors import UsageError
from tstcli.files import replacing

FORMATS = ("png", "svg", "pdf")  # what --out's suffix may ask for (matplotlib writes each without extras)


def check_out(out: Path) -> str:
    """The format `out`'s suffix asks for; exit 2 for any other."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"--out {out}: the suffix names the format: .png, .svg or .pdf")
    return fmt


def plot(curves: list[Curve], result: dict, out: Path, ylabel: str = "held-out loss") -> None:
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"--out {out}: drawing needs matplotlib: pip install 'tst[plot]' (the table above "
                         "needs nothing)") from None
    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt

    axis = result["axis"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for c, row in zip(curves, result["runs"]):
        own = c.own_steps()  # a branch from where it leaves its parent: the shared part is the parent's line
        ys = [y for s, y in zip(c.steps, c.losses) if s in own]
        (line,) = ax.plot([c.x(axis, s) for s in own], ys, marker="o", markersize=2.5, linewidth=1.4,
                          linestyle="--" if c.branch else "-", label=f"{c.name} ({c.label})")
        if c.branch and own:
            ax.plot([c.x(axis, own[0])], ys[:1], marker="D", markersize=5, color=line.get_color())
        if row["switch_x"] is not None and not (c.branch and own and c.switch_step < own[0]):
            ax.axvline(row["switch_x"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(result["target_loss"], color="grey", linestyle="--", linewidth=0.8,
               label=f"final value of {result['reference']}")
    ax.set_xlabel(AXES[axis][1] + ("  (dotted: switch to next-token training)" if any(
        r["switch_x"] is not None for r in result["runs"]) else ""))
    ax.set_ylabel("held-out next-token loss" if ylabel == "held-out loss" else ylabel)
    if not result.get("higher_better"):  # a loss: leave out the first steep drop so the end is readable
        low = min(min(c.losses) for c in curves)
        ax.set_ylim(low - 0.05 * abs(low), min(max(c.losses[min(1, len(c.losses) - 1)] for c in curves) + 0.2,
                                               max(max(c.losses) for c in curves)) + 0.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        fig.savefig(tmp, format=check_out(out))
    plt.close(fig)
