"""`tst prepare RECIPE`: tokenize and shard the corpus, pack rows for the recipe's phases."""
from __future__ import annotations

from pathlib import Path

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, SetList, SetOption, emit, log
from tstcli.cli.report import prepare_lines
from tstcli.data.prepare import prepare_recipe


def prepare(
    recipe: Path = typer.Argument(..., help="recipe TOML file"),
    set_: SetList = SetOption,
    force: bool = typer.Option(False, "--force", help="re-tokenize even if the data is up to date"),
    verify: bool = typer.Option(False, "--verify", help="check every shard's sha256 against the manifest"),
    json_: bool = JsonOption,
):
    """Tokenize the recipe's corpus into shards + manifest and pack the rows each phase reads."""
    out = prepare_recipe(recipes.load(recipe, set_ or []), force=force, verify=verify, log=log)
    emit(out, json_, prepare_lines(out))
