"""Experiment trackers: TensorBoard (`log.tensorboard`, extra `tst[tensorboard]`) and Weights & Biases (`log.wandb`,
extra `tst[wandb]`). Each receives every train, val, bench and checkpoint row. A tracker that fails — not installed,
no network, a bad key — prints one warning line and is dropped; training goes on and `metrics.jsonl` keeps every
row.

A resume continues the same tracker run: TensorBoard writes to `tensorboard/` in the run directory again and purges
the steps being replayed; the W&B run id is kept in the run directory's `trackers.json`, and steps W&B has already
seen are replayed with identical values (resume is bitwise), which it ignores.
"""
from __future__ import annotations

import json
import uuid

from tstcli import recipe as recipes
from tstcli.run import rundir
from tstcli.train.hooks import Hook


class TrackerUnavailable(Exception):
    pass


def scalars(row: dict) -> dict[str, float]:
    """A row's numbers under tracker tags: `train/loss`, `val/val_loss`, `bench/hellaswag/acc_norm`, ..."""
    kind = row["kind"]
    prefix = f"bench/{row['task']}/" if kind == "bench" else f"{kind}/"
    flat = {}
    for k, v in row.items():  # a dict of numbers (mix_tokens) becomes one tag per key: train/mix_tokens/dclm
        flat.update({f"{k}/{name}": x for name, x in v.items()} if isinstance(v, dict) else {k: v})
    return {prefix + k: float(v) for k, v in flat.items()
            if k not in ("kind", "step", "task") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _state(run_dir) -> dict:
    try:
        return json.loads((run_dir / rundir.TRACKERS).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(run_dir, **values) -> None:
    from tstcli.files import write_json_atomic

    write_json_atomic(run_dir / rundir.TRACKERS, {**_state(run_dir), **values})


class Tracker(Hook):
    """Shared failure handling: every call into the tracker goes through `_guard`."""
    priority = 20  # after the metrics log
    name = "tracker"

    def __init__(self):
        self.live = False

    def _guard(self, t, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any tracker failure must never cost the run
            self.live = False
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            t.say(f"warning: {self.name} tracking is off ({reason}); training goes on, metrics.jsonl has every row")

    def on_start(self, t) -> None:
        self.live = True
        self._guard(t, self.open, t)

    def on_row(self, t, row: dict) -> None:
        if self.live and row["kind"] in ("train", "val", "bench", "checkpoint"):
            self._guard(t, self.log, row)

    def before_save(self, t, step: int) -> None:
        if self.live:
            self._guard(t, self.flush)

    def on_close(self, t) -> None:
        if self.live:
            self._guard(t, self.close)
        self.live = False

    def open(self, t) -> None: ...
    def log(self, row: dict) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class TensorBoard(Tracker):
    name = "TensorBoard"
    DIR = "tensorboard"

    def open(self, t) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerUnavailable("tensorboard is not installed: pip install 'tst[tensorboard]'") from None
        logdir = t.run_dir / self.DIR
        # Steps after the checkpoint are replayed: hide their earlier events (all of them when restarting at 0).
        purge = (t.state.step + 1 if t.state.step else 0) if logdir.exists() else None
        self.writer = SummaryWriter(str(logdir), purge_step=purge)
        _save_state(t.run_dir, tensorboard_dir=self.DIR)

    def log(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, row["step"])

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB(Tracker):
    name = "W&B"

    def __init__(self, project: str):
        super().__init__()
        self.project = project

    def open(self, t) -> None:
        try:
            import wandb
        except ImportError:
            raise TrackerUnavailable("wandb is not installed: pip install 'tst[wandb]'") from None
        run_id = _state(t.run_dir).get("wandb_run_id") or uuid.uuid4().hex[:16]  # W&B ids: [a-z0-9]
        _save_state(t.run_dir, wandb_run_id=run_id)
        self.run = wandb.init(project=self.project, id=run_id, resume="allow", dir=str(t.run_dir),
                              name=t.run_dir.name, config=recipes.to_dict(t.r),
                              settings=wandb.Settings(silent=True, console="off", init_timeout=30))

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def close(self) -> None:
        self.run.finish()
