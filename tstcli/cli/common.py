"""Helpers shared by the verbs: logging to stderr, JSON/plain results on stdout, data preparation on demand."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tstcli.data import prepare as prep
from tstcli.recipe import Recipe

SetOption = typer.Option(None, "--set", help="override a recipe key: key.path=value (TOML value syntax); repeatable",
                         metavar="KEY=VALUE")
JsonOption = typer.Option(False, "--json", help="print one JSON object on stdout instead of text")

SetList = Optional[List[str]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for line in lines:
            print(line)


def ensure_prepared(r: Recipe, force: bool = False) -> tuple[Path, prep.PrepareResult | None]:
    """Prepare the recipe's data if it is missing or stale (with a log line saying so)."""
    data_dir = Path(r.data_dir)
    if not force and prep.is_up_to_date(data_dir, r.data):
        return data_dir, None
    log(f"prepare: data in {data_dir} is missing or stale; tokenizing {', '.join(r.data.sources)}")
    return data_dir, prep.prepare(r.data, data_dir, force=True, log=log)


def train_in_world(r: Recipe, as_json: bool, body) -> None:
    """Join the job's process group (one process without torchrun), run `body(world, device)` to a result,
    always leave the group, and print the result on rank 0: the shape shared by `train` and `resume`."""
    import os

    from tstcli.cli.summary import summary_lines
    from tstcli.train import distributed

    world, device = distributed.start(r, os.environ)
    try:
        result = body(world, device)
    finally:
        distributed.shutdown()
    if world.main:
        emit(result, as_json, summary_lines(result))
