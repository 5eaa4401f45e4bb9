"""`tst train RECIPE`: prepare data if needed, then train through both phases (or `--dry-run`: the plan)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from tstcli import recipe as recipes
from tstcli import recipe_rules
from tstcli.cli.common import JsonOption, SetList, SetOption, emit, eval_data_dir, log


def train(
    recipe: Path = typer.Argument(..., help="recipe TOML file"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default runs/<run.name>)"),
    set_: SetList = SetOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and train nothing"),
    nproc: Optional[List[int]] = typer.Option(None, "--nproc", min=1, max=1 << 20,
                                              help="with --dry-run: world sizes to plan for (repeatable)"),
    json_: bool = JsonOption,
):
    """Train a model: superposition phase, then next-token recovery; checkpoints and metrics in the run dir."""
    # torch is imported here, not at module level: `tst --help`, `prepare` and usage errors stay fast.
    from tstcli.cli.report import plan_lines, summary_lines

    r = recipes.load(recipe, set_ or [])
    for advice in recipe_rules.advisories(r):
        log(f"warning: {advice}")
    if dry_run:
        from tstcli.train.dryrun import dry_run_plan

        plan, note = dry_run_plan(r, nproc or [1])
        emit(plan, json_, plan_lines(r, plan) + ([note] if note else []))
        return
    from tstcli.train.session import train_new

    world, result = train_new(r, run_dir or Path("runs") / r.run.name, os.environ, eval_data_dir(), log)
    if world.main:
        emit(result, json_, summary_lines(result))
