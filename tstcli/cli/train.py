"""`tst train RECIPE`: prepare data if needed, then train through both phases."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, SetList, SetOption, emit, ensure_prepared, log, train_in_world
from tstcli.data import shards
from tstcli.data.tokenizer import load_tokenizer
from tstcli.train import rundir


def plan_vocab_size(r, manifest) -> tuple[int, str | None]:
    """The vocabulary a dry run sizes the model for: the prepared data's, the BPE's target size, or the loaded
    tokenizer's (from a path or the local hub cache; never a network wait), else data.vocab_size with a note."""
    from tstcli.errors import DataError

    if manifest:
        return manifest["vocab_size"], None
    if r.data.tokenizer == "bpe":
        return r.data.vocab_size, None
    try:
        return load_tokenizer(r.data.tokenizer, local_only=True).get_vocab_size(with_added_tokens=True), None
    except DataError as e:
        return r.data.vocab_size, f"vocab: {r.data.vocab_size:,} from data.vocab_size ({e})"


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
    from tstcli.train.loop import Trainer, open_data
    from tstcli.train.plan import build_plan, plan_lines

    r = recipes.load(recipe, set_ or [])
    run_dir = run_dir or Path("runs") / r.run.name
    if dry_run:
        data_dir = Path(r.data_dir)
        manifest = shards.read_manifest(data_dir) if (data_dir / shards.MANIFEST).is_file() else None
        vocab, note = plan_vocab_size(r, manifest)
        plan = build_plan(r, vocab, manifest, nproc or [1])
        emit(plan, json_, plan_lines(r, plan) + ([note] if note else []))
        return
    from tstcli.train import distributed

    def body(world, device):
        # Under torchrun every rank runs this; rank 0 alone prepares data and writes the run directory.
        rundir.ensure_new(run_dir)
        distributed.barrier()  # every rank has checked before rank 0 creates anything
        if world.main:
            data_dir, _ = ensure_prepared(r)
            data, built = open_data(r, data_dir)
            if built:
                log(f"prepare: packed rows for this recipe in {data.pack.directory}")
            rundir.create(run_dir, recipes.to_toml(r), data_dir, data.manifest_sha, data.pack.info["key"])
            log(f"train: run directory {run_dir}" + (f" ({world.size} processes)" if world.distributed else ""))
        distributed.barrier()
        if not world.main:
            data, _ = open_data(r, Path(r.data_dir))
        return Trainer(r, run_dir, data, world=world, device=device).run()

    train_in_world(r, json_, body)
