"""The self-describing run directory: resolved recipe, tokenizer, data manifest, metrics, checkpoints."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tstcli import __version__
from tstcli.data.shards import write_json_atomic
from tstcli.errors import CheckpointError, RecipeError

RECIPE, RUN_INFO, METRICS, CHECKPOINTS = "recipe.toml", "run.json", "metrics.jsonl", "checkpoints"


def holds_run(run_dir: Path) -> bool:
    return (run_dir / RUN_INFO).exists() or (run_dir / METRICS).exists() or (run_dir / CHECKPOINTS).exists()


def ensure_new(run_dir: Path) -> None:
    if holds_run(run_dir):
        raise RecipeError(f"run directory {run_dir} already holds a run: continue it with `tst resume {run_dir}` "
                          "or pass another --run-dir")


def create(run_dir: Path, recipe_toml: str, data_dir: Path, manifest_sha: str, pack_key: str) -> None:
    ensure_new(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECIPE).write_text(recipe_toml)
    shutil.copyfile(data_dir / "tokenizer.json", run_dir / "tokenizer.json")
    shutil.copyfile(data_dir / "manifest.json", run_dir / "manifest.json")
    write_json_atomic(run_dir / RUN_INFO, {"data_dir": str(data_dir.resolve()), "manifest_sha256": manifest_sha,
                                          "pack": pack_key, "tst_version": __version__})


def read_info(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir}: no such directory")
    path = run_dir / RUN_INFO
    if not path.is_file() or not (run_dir / RECIPE).is_file():
        raise CheckpointError(f"run directory {run_dir}: no {RUN_INFO} / {RECIPE} (not a tst run directory)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise CheckpointError(f"{path}: corrupt run description (expected JSON)") from None


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop metric rows written after the checkpoint a run resumes from (they are replayed exactly)."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if row.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_name(METRICS + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
