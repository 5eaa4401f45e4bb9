"""`tst export RUN_DIR --out DIR`: a standard Hugging Face Llama checkpoint from a run's checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, emit
from tstcli.errors import CheckpointError, RecipeError
from tstcli.train import rundir


def export(
    run_dir: Path = typer.Argument(..., help="run directory written by `tst train`"),
    out: Path = typer.Option(..., "--out", help="directory to write the export to"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step to export (default: the latest)"),
    dtype: str = typer.Option("fp32", "--dtype", help="weight dtype of the export: fp32 or bf16"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out"),
    json_: bool = JsonOption,
):
    """Export a checkpoint as a Hugging Face Llama model (config, safetensors, tokenizer) and self-test it."""
    from tstcli.export.hf import DTYPES, export as write_export
    from tstcli.model import Llama
    from tstcli.train import checkpoint

    if dtype not in DTYPES:
        raise RecipeError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        vocab = manifest["vocab_size"]
    except (OSError, ValueError, KeyError):
        raise CheckpointError(f"{run_dir / 'manifest.json'}: missing or corrupt (not a complete run directory)") from None
    ckpt = checkpoint.find(run_dir / rundir.CHECKPOINTS, step)
    model = Llama(r.model, vocab)
    checkpoint.load_weights(ckpt, model)
    res = write_export(r, run_dir, model, manifest, out, dtype, force, source=str(ckpt))
    diff = res["self_test_max_abs_diff"]
    check = (f"self-test: transformers' logits match the native model's (max |diff| {diff:.2e} <= 1e-4, fp32)"
             if diff is not None else "self-test skipped: transformers is not installed (pip install 'tst[export]')")
    emit(res, json_, [f"export: {out} ({dtype}) from {ckpt}", f"files: {', '.join(res['files'])}", check])
