"""Curves of runs, read from their `metrics.jsonl`, and the equal-quality speed-up between them.

A curve's points are the validation rows (always ordinary next-token loss, so TST and baseline runs compare) or,
with a metric such as `hellaswag.acc_norm`, the in-loop benchmark rows of that task (higher is better), placed on
an x axis: cumulative FLOPs, raw tokens read, optimizer steps or wall time at that step (taken from the
train row of the same step; 0 at step 0). The point where a run first reaches a target loss is interpolated
linearly between the two validation points that straddle it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tstcli.errors import CheckpointError
from tstcli.run import metrics

# axis name -> (train-row field, label)
AXES = {"flops": ("flops", "FLOPs"), "tokens": ("tokens", "raw tokens"), "steps": ("step", "steps"),
        "time": ("elapsed_s", "wall time (s)")}


VAL_LOSS = "val_loss"


@dataclass(frozen=True)
class Curve:
    name: str
    steps: tuple[int, ...]  # evaluated steps, ascending
    losses: tuple[float, ...]  # the metric's values (held-out loss by default)
    at_step: dict  # step -> {axis: x}
    switch_step: int | None  # last phase-1 step (None: no superposition phase)
    label: str  # e.g. "s=4, ratio=0.3" or "baseline"
    higher_better: bool = False  # benchmark scores; a loss is lower-better
    log: Path | None = None  # the metrics.jsonl it was read from
    branch: dict | None = None  # an anneal: {"run": its parent's directory, "step": where it left it}

    def own_steps(self) -> tuple[int, ...]:
        """The evaluated steps to draw as this run's own: a branch shares its parent's up to the branch step, so from
        its last evaluation at or before that step (where the lines join) on."""
        if self.branch is None:
            return self.steps
        start = max((s for s in self.steps if s <= self.branch["step"]), default=0)
        return tuple(s for s in self.steps if s >= start)

    def check_axis(self, axis: str) -> None:
        """Every point (and the switch) has a value on `axis`: a row without one (older or edited logs) is one
        line naming the log, not a wrong curve."""
        for step in (*self.steps, *([self.switch_step] if self.switch_step else [])):
            if step and self.at_step[step][axis] is None:
                raise CheckpointError(f"{self.log or self.name}: the train row of step {step} has no "
                                      f"{AXES[axis][0]} (needed for --x {axis})")

    def xs(self, axis: str) -> list[float]:
        return [self.x(axis, s) for s in self.steps]

    def x(self, axis: str, step: int) -> float:
        return 0.0 if step == 0 else float(self.at_step[step][axis])

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def _points(rows: list[dict], metric: str) -> dict[int, float]:
    """step -> value of `metric`: `val_loss` from val rows, `TASK.METRIC` (e.g. hellaswag.acc_norm) from bench rows."""
    if metric == VAL_LOSS:
        return {row["step"]: row["val_loss"] for row in rows if row.get("kind") == "val"}
    task, _, name = metric.partition(".")
    return {row["step"]: row[name] for row in rows
            if row.get("kind") == "bench" and row.get("task") == task and name in row}


def load_curve(run_dir: Path, metric: str = VAL_LOSS) -> Curve:
    path = run_dir / metrics.METRICS
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no metrics.jsonl (not a tst run directory)")
    rows = metrics.read_rows(run_dir)
    train = {row["step"]: row for row in rows if row.get("kind") == "train" and isinstance(row.get("step"), int)}
    metrics.check_complete(run_dir, max(train, default=0),
                           "its curve would skip them (x values and speed-ups would be wrong)")
    for step, row in sorted(train.items()):
        if "phase" not in row:
            raise CheckpointError(f"{path}: the train row of step {step} has no phase")
    val = _points(rows, metric)
    steps = tuple(sorted(s for s in val if s == 0 or s in train))
    if not steps:
        what = 'held-out evaluations (kind = "val" rows)' if metric == VAL_LOSS else \
            f'benchmark rows (kind = "bench") with {metric} (recipe key eval.bench)'
        raise CheckpointError(f"{path}: no {what} to compare")
    at_step = {s: {axis: row.get(field) for axis, (field, _) in AXES.items()} for s, row in train.items()}
    phase1 = [s for s, row in train.items() if row["phase"] == 1]
    branch = _parent(run_dir)
    label = _label(run_dir, bool(phase1))
    if branch is not None:
        label = f"anneal of {Path(branch['run']).name} @{branch['step']}"
    return Curve(run_dir.name, steps, tuple(val[s] for s in steps), at_step, max(phase1) if phase1 else None,
                 label, higher_better=metric != VAL_LOSS, log=path, branch=branch)


def _parent(run_dir: Path) -> dict | None:
    """The `parent` an anneal's run.json records (`run/branch.py`), if any."""
    import json

    try:
        parent = json.loads((run_dir / "run.json").read_text()).get("parent")
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(parent, dict) and isinstance(parent.get("step"), int) and isinstance(parent.get("run"), str)
    return parent if ok else None


def _label(run_dir: Path, has_phase1: bool) -> str:
    from tstcli import recipe as recipes

    try:
        r = recipes.load(run_dir / "recipe.toml")
    except Exception:  # a bare metrics file still compares; the label is then generic
        return "superposition" if has_phase1 else "baseline"
    if r.tst.bag_size == 1 or r.plan.phase1_steps == 0:
        return "baseline"
    return f"s={r.tst.bag_size}, ratio={r.tst.ratio:g}" + ("" if r.tst.mode == "full" else f", {r.tst.mode}")


def first_reach(curve: Curve, axis: str, target: float) -> float | None:
    """The x at which `curve` first reaches `target` (linear between straddling points); None if it never does."""
    xs, ys = curve.xs(axis), curve.losses
    for i, y in enumerate(ys):
        if (y >= target if curve.higher_better else y <= target):
            if i == 0:
                return xs[0]
            x0, y0, x1 = xs[i - 1], ys[i - 1], xs[i]
            return x0 + (y0 - target) / (y0 - y) * (x1 - x0)
    return None


def compare(curves: list[Curve], axis: str, reference: int = 0) -> dict:
    """Final loss of each run and the x at which it first reaches the reference run's final loss."""
    for c in curves:
        c.check_axis(axis)
    ref = curves[reference]
    target = ref.final_loss
    ref_reach = first_reach(ref, axis, target)
    rows = []
    for c in curves:
        reach = first_reach(c, axis, target)
        rows.append({
            "run": c.name, "label": c.label, "final_val_loss": c.final_loss,
            "final_x": c.x(axis, c.steps[-1]), "reach_x": reach,
            "speedup": (ref_reach / reach if reach and ref_reach else None),
            "switch_x": c.x(axis, c.switch_step) if c.switch_step else None,
            "branch_of": c.branch["run"] if c.branch else None,
            "branch_x": c.x(axis, c.branch["step"]) if c.branch else None,
        })
    return {"axis": axis, "reference": ref.name, "target_loss": target, "higher_better": ref.higher_better,
            "runs": rows}
