"""A run branched from step N of another (`tst anneal`): the parent's recipe with an [anneal] table, its checkpoint
of step N and its log up to N, in a new run directory that then resumes like any run. The parent is only read
(its checkpoint pinned against pruning while it is linked); `run.json` records it as `parent`.

Because the data plan is the parent's (`train.steps`, the pack, the phase split are unchanged; the anneal only
ends earlier and decays), the branch reads at step N + 1 exactly the rows the parent read or would read there."""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
from pathlib import Path

from tstcli import recipe as recipes
from tstcli.errors import CheckpointError, UsageError, as_error, environment_fault
from tstcli.prep.dependents import CLAIM
from tstcli.prep.prepare import data_lock
from tstcli.recipe_rules import anneal_problem
from tstcli.run import checkpoint, metrics, pins, rundir

PARENT = "parent"  # run.json: {"run": path, "step": N, "decay_steps": K}


def anneal_recipe(parent: Path, step: int, decay_steps: int) -> recipes.Recipe:
    """The branch's recipe: the parent's with `[anneal] step, decay_steps`; exit 2 where that cannot be."""
    rundir.read_info(parent)
    r = recipes.load(parent / rundir.RECIPE)
    if r.anneal.step:
        raise UsageError(f"{parent}: is itself an anneal (of step {r.anneal.step}): anneal its parent instead")
    problem = anneal_problem(r.train, r.tst.restart_schedule, step, decay_steps)
    if problem:
        raise UsageError(f"tst anneal {parent} --step {step} --decay-steps {decay_steps}: {problem}")
    return dataclasses.replace(r, anneal=recipes.AnnealConfig(step, decay_steps))


def default_dir(parent: Path, step: int, decay_steps: int) -> Path:
    return parent.parent / f"{parent.name}-anneal-{step}+{decay_steps}"


def create(parent: Path, child: Path, r: recipes.Recipe, log) -> None:
    """Write the branch into `child` (new or empty; the caller holds its lock). A failure leaves no branch."""
    step = r.anneal.step
    root = parent / rundir.CHECKPOINTS
    try:
        with pins.reading(lambda: _checkpoint_of(root, step)) as ckpt:
            info = rundir.read_info(parent)
            data_dir = Path(info["data_dir"])
            extra = {PARENT: {"run": str(parent.resolve()), "step": step, "decay_steps": r.anneal.decay_steps}}
            with data_lock(data_dir, log):  # registered on the data like any run
                rundir.create(child, recipes.to_toml(r), data_dir, info["manifest_sha256"], info["pack"], extra)
            _link_checkpoint(ckpt, child / rundir.CHECKPOINTS, recipes.to_toml(r))
            shutil.copyfile(parent / metrics.METRICS, child / metrics.METRICS)
            metrics.truncate(child, step)
        log(f"anneal: {child} from {ckpt.name} of {parent}, decaying over {r.anneal.decay_steps} steps "
            f"({r.train.decay_shape}, to {r.train.min_lr_ratio:g} x the peak) to step {step + r.anneal.decay_steps}")
    except OSError as e:
        _undo(child)
        if environment_fault(e) is None:
            raise
        raise as_error(e, CheckpointError, f"writing the anneal run {child}") from None
    except BaseException:
        _undo(child)
        raise


def _checkpoint_of(root: Path, step: int) -> Path:
    try:
        return checkpoint.find(root, step)
    except CheckpointError as e:  # no checkpoint of that step: the step asked for is the user's to change
        raise UsageError(f"--step {step}: {e}") from None


def _link_checkpoint(ckpt: Path, root: Path, recipe_toml: str) -> None:
    """The parent's checkpoint files hard-linked (tst never writes into a finished checkpoint; copied across file
    systems), the branch's recipe beside them, renamed into place last: a complete checkpoint or none."""
    root.mkdir()
    tmp = root / f".tmp-{ckpt.name}-branch"
    tmp.mkdir()
    for f in ckpt.iterdir():
        if f.is_file() and f.name not in (rundir.RECIPE, pins.PIN):
            try:
                os.link(f, tmp / f.name)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copy2(f, tmp / f.name)
    (tmp / rundir.RECIPE).write_text(recipe_toml)  # the recipe it continues under (only steps > N differ)
    pins.make(tmp)
    tmp.rename(root / ckpt.name)


def _undo(child: Path) -> None:
    for name in (rundir.RUN_INFO, rundir.RECIPE, rundir.TOKENIZER, rundir.MANIFEST, metrics.METRICS, CLAIM,
                 rundir.CHECKPOINTS):
        path = child / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
