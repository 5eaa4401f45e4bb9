"""`tst prepare RECIPE`: tokenize and shard the corpus, pack rows for the recipe's phases."""
from __future__ import annotations

from pathlib import Path

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, SetList, SetOption, emit, log
from tstcli.cli.report import coverage_lines
from tstcli.data import packing, shards
from tstcli.data.prepare import ensure_prepared


def prepare(
    recipe: Path = typer.Argument(..., help="recipe TOML file"),
    set_: SetList = SetOption,
    force: bool = typer.Option(False, "--force", help="re-tokenize even if the data is up to date"),
    verify: bool = typer.Option(False, "--verify", help="check every shard's sha256 against the manifest"),
    json_: bool = JsonOption,
):
    """Tokenize the recipe's corpus into shards + manifest and pack the rows each phase reads."""
    r = recipes.load(recipe, set_ or [])
    data_dir, result = ensure_prepared(r, force=force, log=log)
    manifest = shards.read_manifest(data_dir)
    if result is None:
        log(f"prepare: {data_dir} is up to date with the recipe's sources and tokenizer; nothing to do "
            "(--force rebuilds)")
    shards.verify(data_dir, manifest, full=verify)
    pack, built = packing.ensure_pack(r, data_dir, manifest, shards.manifest_sha256(data_dir))
    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    out = {"data_dir": str(data_dir), "up_to_date": result is None, "vocab_size": manifest["vocab_size"],
           "train_tokens": tr["tokens"], "val_tokens": va["tokens"], "train_documents": tr["documents"],
           "val_documents": va["documents"], "pack": str(pack.directory), "coverage": pack.info}
    lines = [f"data: {data_dir} ({'up to date' if result is None else 'prepared'})",
             f"tokens: {tr['tokens']:,} train ({tr['documents']:,} documents), {va['tokens']:,} validation "
             f"({va['documents']:,} documents), vocab {manifest['vocab_size']:,}, {manifest['dtype']}"]
    if result is not None:
        mb = result.source_bytes / 1e6
        out.update(seconds=result.seconds, mb_per_s=mb / result.seconds)
        lines.append(f"time: {result.seconds:.1f} s for {mb:.1f} MB of sources ({mb / result.seconds:.1f} MB/s)")
    lines.append(f"pack: {pack.directory} ({'built' if built else 'existing'})")
    lines += coverage_lines(pack.info)
    if verify:
        lines.append("verify: every shard matches its sha256 in the manifest")
    emit(out, json_, lines)
