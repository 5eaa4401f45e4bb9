"""`tst resume RUN_DIR`: continue a stopped or killed run from its latest complete checkpoint."""
from __future__ import annotations

from pathlib import Path

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, emit, log
from tstcli.cli.summary import summary_lines
from tstcli.data import shards
from tstcli.errors import DataError
from tstcli.train import rundir


def resume(
    run_dir: Path = typer.Argument(..., help="run directory written by `tst train`"),
    json_: bool = JsonOption,
):
    """Continue a run exactly where its latest complete checkpoint left it (needs only the run directory)."""
    from tstcli.train import checkpoint
    from tstcli.train.loop import Trainer, open_data  # torch: imported only when needed

    info = rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    data_dir = Path(info["data_dir"])
    manifest_path = data_dir / shards.MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: the run's prepared data is gone (run.json names {data_dir})")
    if shards.manifest_sha256(data_dir) != info["manifest_sha256"]:
        raise DataError(f"{manifest_path}: the prepared data changed since this run started (manifest sha256 "
                        f"differs from {run_dir / rundir.RUN_INFO}); resuming would read different rows")
    data, _ = open_data(r, data_dir)
    ckpt = checkpoint.latest(run_dir / rundir.CHECKPOINTS)
    log(f"resume: {run_dir} from {ckpt.name if ckpt else 'the start (no complete checkpoint yet)'}")
    result = Trainer(r, run_dir, data).run(resume=ckpt)
    emit(result, json_, summary_lines(result))
