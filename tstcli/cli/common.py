"""Helpers shared by the verbs: logging to stderr, JSON/plain results on stdout, the options every verb shares,
and the one place the CLI reads the environment (what is passed below it)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tstcli.errors import UsageError

SetOption = typer.Option(None, "--set", help="override a recipe key: key.path=value (TOML value syntax); repeatable",
                         metavar="KEY=VALUE")
JsonOption = typer.Option(False, "--json", help="print one JSON object on stdout instead of text")

SetList = Optional[List[str]]
DeviceOption = typer.Option("auto", "--device", help="auto (a GPU when there is one), cpu or cuda")
DtypeOption = typer.Option("auto", "--dtype", help="weights and compute: auto (bf16 on a GPU, fp32 on the CPU), "
                           "fp32 or bf16")


def eval_data_dir() -> Path:
    """Where benchmark files are looked for first: $TST_EVAL_DATA, else ~/.cache/tst/eval."""
    from tstcli.eval.datafiles import default_data_dir

    return default_data_dir(os.environ)


def check_output_file(path: Path, option: str) -> None:
    """An output file is checked before the work, not after it: its folder exists and can be written to."""
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, expected a file to write")
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for line in lines:
            print(line)
