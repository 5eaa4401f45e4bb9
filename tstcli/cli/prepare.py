"""`tst prepare RECIPE`: tokenize and shard the corpus, pack rows for the recipe's phases; as one worker of many
(`--worker I --workers N`, then `--workers N --merge`) or as every rank of a torchrun job."""
from __future__ import annotations

import os
from pathlib import Path

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, SetList, SetOption, emit, log
from tstcli.cli.report import prepare_lines, worker_lines
from tstcli.errors import UsageError
from tstcli.prep.prepare import prepare_recipe
from tstcli.prep.work import Worker


def _worker(worker: int | None, workers: int | None, merge: bool, force: bool) -> Worker:
    # torchrun's RANK and WORLD_SIZE, read here rather than through parallel.world: `tst prepare` never imports torch
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if worker is None and workers is None and not merge:
        # Under torchrun the ranks are the workers: rank 0 merges once every unit is finished.
        if size > 1 and force:
            raise UsageError(f"--force under torchrun ({size} processes): --force rebuilds with one process only; "
                             "delete the data directory to restart the job's workers")
        return Worker(rank, size, merge=rank == 0, wait=True) if size > 1 else Worker()
    if workers is None or workers < 1:
        raise UsageError("--workers N (N >= 1) is needed with --worker and --merge")
    if worker is not None and not 0 <= worker < workers:
        raise UsageError(f"--worker {worker}: must be in [0, {workers - 1}] with --workers {workers}")
    if worker is None and not merge:
        raise UsageError("--workers N needs --worker I (tokenize worker I's units) or --merge (write the manifest)")
    if force and workers > 1:
        raise UsageError(f"--force with --workers {workers}: --force rebuilds with one worker only; delete the "
                         "data directory to restart N workers")
    return Worker(worker or 0, workers, tokenize=worker is not None, merge=merge)


def prepare(
    recipe: Path = typer.Argument(..., help="recipe TOML file"),
    set_: SetList = SetOption,
    force: bool = typer.Option(False, "--force", help="re-tokenize even if the data is up to date"),
    verify: bool = typer.Option(False, "--verify", help="check every shard's sha256 against the manifest"),
    worker: int = typer.Option(None, "--worker", help="tokenize only the work units of worker I (0-based) of "
                               "--workers N (e.g. $SLURM_ARRAY_TASK_ID); finished units are kept and not redone"),
    workers: int = typer.Option(None, "--workers", help="how many workers share the work units"),
    merge: bool = typer.Option(False, "--merge", help="write the manifest once every unit is finished (else exit 3 "
                               "naming the unfinished ones)"),
    json_: bool = JsonOption,
):
    """Tokenize the recipe's corpus into shards + manifest and pack the rows each phase reads."""
    how = _worker(worker, workers, merge, force)
    out = prepare_recipe(recipes.load(recipe, set_ or []), force=force, verify=verify, log=log, worker=how)
    emit(out, json_, prepare_lines(out) if how.merge else worker_lines(out))
