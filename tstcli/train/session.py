"""Starting a run the way `tst train` and `tst resume` do, in one process or under torchrun: join the job's world,
prepare the data (every rank tokenizes its share of the work units), let rank 0 pack and write the run directory
while the other ranks wait, then every rank trains. The
verbs call `train_new` / `resume_run` and print the result."""
from __future__ import annotations

import shutil
from pathlib import Path

from tstcli import recipe as recipes
from tstcli.data.opener import TrainData, open_data
from tstcli.eval.datafiles import default_data_dir
from tstcli.files import write_json_atomic
from tstcli.parallel.world import World, barrier, raise_together, shutdown, start
from tstcli.prep import location
from tstcli.prep.prepare import data_lock, ensure_prepared
from tstcli.prep.work import Worker
from tstcli.recipe import Recipe
from tstcli.run import branch as branches
from tstcli.run import checkpoint, init_from, rundir
from tstcli.train import float8
from tstcli.train.hardware import resolve_dtype
from tstcli.train.hooks import Hooks
from tstcli.train.hooks.defaults import default_hooks
from tstcli.train.hooks.signals import ignore_from_now
from tstcli.train.trainer import Trainer


def _in_world(r: Recipe, env, body) -> tuple[World, dict]:
    """Join the world (one process without torchrun), run `body(world, device)`, always leave the world."""
    world, device = start(r, env)
    try:
        if r.train.float8:  # before anything is written: one line where float8 cannot run
            float8.check(device)
        return world, body(world, device)
    finally:
        shutdown()


def _start_run(r: Recipe, run_dir: Path, world: World, log) -> TrainData:
    """Rank 0, holding the run's lock: prepare the data if needed and pack it, check `model.init_from`, write the
    run directory (registered on the data under the data directory's lock)."""
    rundir.ensure_new(run_dir)  # again, under the lock: another process may have started it meanwhile
    with data_lock(location.data_dir(r), log):
        data_dir, _ = ensure_prepared(r, log=log)
        data, built = open_data(r, data_dir)
        if built:
            log(f"prepare: packed rows for this recipe in {data.pack.directory}")
        start = (init_from.check(r.model.init_from, r.model, data.manifest["vocab_size"],
                                 data_dir / rundir.TOKENIZER) if r.model.init_from else None)
        rundir.create(run_dir, recipes.to_toml(r), data_dir, data.manifest_sha, data.pack.info["key"])
    if start is not None:
        write_json_atomic(run_dir / init_from.INIT_FROM, start)
        log(f"init: from {start['checkpoint']}" + (f" (revision {start['revision']})" if start["revision"] else ""))
    log(f"train: run directory {run_dir}" + (f" ({world.size} processes)" if world.distributed else ""))
    return data


def train_new(r: Recipe, run_dir: Path, env, eval_data_dir: Path, log) -> tuple[World, dict]:
    """A new run in `run_dir` (refused if it holds one): prepare data if missing or stale, train both phases."""
    def body(world, device):
        r = resolve_dtype(given, device, log if world.main else None)  # the run's recipe records the dtype used
        hooks = default_hooks(r, world, eval_data_dir)  # checks the side jobs' settings before anything is written
        rundir.ensure_new(run_dir)
        Hooks(hooks).preflight(world)
        if world.distributed:  # every rank tokenizes its share; no collective waits on the work (it may take hours)
            ensure_prepared(r, log=log, worker=Worker(world.rank, world.size, merge=world.main, wait=True))
        barrier()  # every rank has checked before rank 0 creates anything
        made = world.main and not run_dir.exists()
        lock, data, failed = None, None, None
        if world.main:
            try:
                lock = rundir.lock(run_dir)
                data = _start_run(r, run_dir, world, log)
            except BaseException as e:
                if made and not rundir.holds_run(run_dir):  # the folder was made for the lock only: leave no trace
                    shutil.rmtree(run_dir, ignore_errors=True)
                if lock is not None:
                    lock.release()
                failed = e
        raise_together(world, failed)  # a refusal is one line from every rank
        if not world.main:
            data, _ = open_data(r, location.data_dir(r))
        try:
            result = Trainer(r, run_dir, data, world, device, hooks).run()
            ignore_from_now()
            return result
        finally:
            if lock is not None:
                lock.release()

    given = r
    return _in_world(r, env, body)


def resume_run(run_dir: Path, allow_changed_data: bool, env, eval_data_dir: Path, log,
               branch: tuple[Path, Recipe] | None = None) -> tuple[World, dict]:
    """Continue `run_dir` from its latest complete checkpoint (from the start when there is none). `branch`:
    (parent run, recipe) of an anneal — rank 0 first writes `run_dir` from the parent (`run/branch.py`)."""
    if branch is None:
        rundir.read_info(run_dir)  # one line before joining a world: not a run directory
    else:
        rundir.ensure_new(run_dir)  # and again under the lock; before it, so a user's folder gets no lock file
    r = branch[1] if branch else recipes.load(run_dir / rundir.RECIPE)

    def body(world, device):
        hooks = default_hooks(r, world, eval_data_dir)
        Hooks(hooks).preflight(world)
        lock, refused = None, None
        if world.main:  # before reading checkpoints: no writer may be pruning
            made = not run_dir.exists()
            try:
                lock = rundir.lock(run_dir)
                if branch is not None:
                    rundir.ensure_new(run_dir)
                    branches.create(branch[0], run_dir, r, log)
            except BaseException as e:
                if lock is not None:
                    lock.release()
                    lock = None
                if made and not rundir.holds_run(run_dir):  # made for the lock only: leave no trace
                    shutil.rmtree(run_dir, ignore_errors=True)
                refused = e
        raise_together(world, refused)  # a run in use is one line from every rank
        try:
            info = rundir.read_info(run_dir)
            ckpt = checkpoint.latest(run_dir / rundir.CHECKPOINTS)
            barrier()  # every rank picked its checkpoint before rank 0 may touch the run directory
            if world.main:
                with data_lock(Path(info["data_dir"]), log):
                    rundir.check_resumable(run_dir, info, r, ckpt, allow_changed_data, log)
                    data, _ = open_data(r, Path(info["data_dir"]))
                log(f"resume: {run_dir} from {ckpt.name if ckpt else 'the start (no complete checkpoint yet)'}")
            barrier()
            if not world.main:
                data, _ = open_data(r, Path(rundir.read_info(run_dir)["data_dir"]))
            result = Trainer(r, run_dir, data, world, device, hooks).run(resume=ckpt)
            ignore_from_now()
            return result
        finally:
            if lock is not None:
                lock.release()

    return _in_world(r, env, body)


def local_trainer(r: Recipe, run_dir: Path, data: TrainData | None = None, hooks: list | None = None,
                  eval_data_dir: Path | None = None) -> Trainer:
    """A trainer in this process, outside the CLI (tests, benchmarks, notebooks): the recipe's prepared data and
    the default hooks without the console, unless given. Joins no process group."""
    world, device = start(r, {})
    r = resolve_dtype(r, device)
    if data is None:
        data, _ = open_data(r, location.data_dir(r))
    if hooks is None:
        hooks = default_hooks(r, world, eval_data_dir or default_data_dir({}), console=False)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(r, run_dir, data, world, device, hooks)
