"""`tst export RUN_DIR --out DIR`: a standard Hugging Face checkpoint from a run's checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tstcli.cli.common import JsonOption, emit
from tstcli.errors import UsageError


def export(
    run_dir: Path = typer.Argument(..., help="run directory written by `tst train`"),
    out: Path = typer.Option(..., "--out", help="directory to write the export to"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step to export (default: the latest)"),
    dtype: str = typer.Option("fp32", "--dtype", help="weight dtype of the export: fp32 or bf16"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out"),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="OWNER/NAME",
                                              help="then upload the export to this Hugging Face hub repo"),
    private: bool = typer.Option(False, "--private", help="with --push-to-hub: create the repo private"),
    revision: Optional[str] = typer.Option(None, "--revision", help="with --push-to-hub: upload to this branch"),
    json_: bool = JsonOption,
):
    """Export a checkpoint as a Hugging Face model (config, safetensors, tokenizer) and self-test it."""
    from tstcli.export.writer import DTYPES, export as write_export, refuse_overlap
    from tstcli.run import rundir

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if push_to_hub is not None and push_to_hub.count("/") != 1:
        raise UsageError(f"--push-to-hub {push_to_hub!r}: expected OWNER/NAME")
    if (private or revision) and push_to_hub is None:
        raise UsageError("--private and --revision apply to --push-to-hub")
    rundir.read_info(run_dir)
    refuse_overlap(out, run_dir)  # before loading anything: --force would delete the run
    res = write_export(run_dir, step, out, dtype, force)
    diff = res["self_test_max_abs_diff"]
    check = ("self-test: weights equal the checkpoint's; " + (
        f"transformers' logits match the native model's (max |diff| {diff:.2e} <= 1e-4, fp32)" if diff is not None
        else "logits check skipped: transformers is not installed (pip install 'tst[export]')"))
    lines = [f"export: {out} ({dtype}) from {res['source']}", f"files: {', '.join(res['files'])}", check]
    if push_to_hub:
        from tstcli.export.hub import push

        res["pushed"] = push(out, push_to_hub, private, revision)
        lines.append(f"pushed: {res['pushed']}")
    emit(res, json_, lines)
