"""Per-phase packing: which rows of the flat training stream each phase reads (docs/design.md, "Data").

The training stream is cut, shard by shard, into *chunks* of `g` consecutive units of `L+1` tokens, where
`g = s` for the full and input modes (a chunk is exactly one phase-1 row of `s·(L+1)` tokens) and the fewest units
covering `L+s` tokens for the output mode. A seeded permutation gives each phase its own chunks, so the phases are
disjoint and both draw from across the whole corpus; a phase-2 chunk yields `g` phase-2 rows of `L+1` tokens.
The result is two arrays of row start offsets (`phase1.npy`, `phase2.npy`) plus `pack.json`, written under
`<data_dir>/packs/<key>/`. Changing `s`, `L`, `ratio`, steps or batch re-packs in milliseconds; tokens are never
re-read. The trainer memory-maps rows at these offsets and does no packing work per step.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tstcli.data import shards
from tstcli.errors import DataError
from tstcli.recipe import Recipe
from tstcli.tst.bags import phase_specs

PACKS = "packs"


def row_widths(r: Recipe) -> dict[int, int]:
    return {p: spec.row_width for p, spec in phase_specs(r).items()}


@dataclass(frozen=True)
class Pack:
    directory: Path
    info: dict
    rows: dict  # phase -> np.ndarray of row start offsets

    @property
    def widths(self) -> dict[int, int]:
        return {int(k): v for k, v in self.info["widths"].items()}


def pack_key(r: Recipe, manifest_sha: str) -> str:
    spec = {"manifest": manifest_sha, "s": r.tst.bag_size, "L": r.train.seq_len, "mode": r.tst.mode,
            "steps": r.train.steps, "phase1_steps": r.phase1_steps, "batch": r.train.batch_size, "seed": r.run.seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _chunk_offsets(manifest: dict, chunk: int) -> np.ndarray:
    out, start = [], 0
    for shard in manifest["splits"]["train"]["shards"]:
        n = shard["tokens"] // chunk
        out.append(start + chunk * np.arange(n, dtype=np.int64))
        start += shard["tokens"]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def split_phases(r: Recipe, manifest: dict) -> tuple[dict, dict]:
    """Decide the phase split: returns (info, rows) without touching the disk."""
    specs = phase_specs(r)
    g, unit, chunk = specs[1].units, specs[2].row_width, specs[1].row_width
    widths = {1: chunk, 2: unit}
    steps = {1: r.phase1_steps, 2: r.train.steps - r.phase1_steps}
    need_rows = {p: steps[p] * r.train.batch_size for p in (1, 2)}
    need_chunks = {1: need_rows[1], 2: math.ceil(need_rows[2] / g)}
    offsets = _chunk_offsets(manifest, chunk)
    n = len(offsets)
    wanted = need_chunks[1] + need_chunks[2]
    if n < (need_chunks[1] > 0) + (need_chunks[2] > 0):
        raise DataError(f"training split has {manifest['splits']['train']['tokens']} tokens, fewer than one row of "
                        f"{chunk} tokens per phase: add data or lower train.seq_len / tst.bag_size")
    if n >= wanted:
        # Enough data: phase 1 takes exactly what it needs, phase 2 everything else (no token read twice).
        c1 = need_chunks[1]
    else:
        # Too little: split in proportion to need, each phase repeats within its own part.
        c1 = round(n * need_chunks[1] / wanted) if wanted else 0
        c1 = min(max(c1, 1 if need_chunks[1] else 0), n - (1 if need_chunks[2] else 0))
    perm = np.random.default_rng([r.run.seed, 0x7057]).permutation(n)
    chunks = {1: np.sort(perm[:c1]), 2: np.sort(perm[c1:])}
    rows = {1: offsets[chunks[1]],
            2: (offsets[chunks[2]][:, None] + unit * np.arange(g, dtype=np.int64)[None, :]).reshape(-1)}
    phases = {}
    for p in (1, 2):
        avail = len(rows[p])
        phases[str(p)] = {
            "steps": steps[p], "row_width": widths[p], "rows": avail, "rows_needed": need_rows[p],
            "tokens_needed": need_rows[p] * widths[p], "tokens_available": avail * widths[p],
            "epochs": (need_rows[p] / avail) if avail else 0.0,
        }
    info = {"widths": widths,
            "phases": phases, "train_tokens": manifest["splits"]["train"]["tokens"],
            "covered_without_repetition": n >= wanted}
    return info, rows


def _write_pack(directory: Path, info: dict, rows: dict) -> bool:
    """Write a pack under a name of this process's own and rename it into place; False when another process
    (a second rank or run on the same data) put the same pack there first."""
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        for p in (1, 2):
            np.save(tmp / f"phase{p}.npy", rows[p])
        shards.write_json_atomic(tmp / "pack.json", info)
        if directory.exists() and not (directory / "pack.json").is_file():
            shutil.rmtree(directory, ignore_errors=True)  # an incomplete pack from before atomic renames
        try:
            tmp.rename(directory)
        except OSError:
            if not (directory / "pack.json").is_file():
                raise
            return False  # someone else's identical pack is in place
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_pack(r: Recipe, data_dir: Path, manifest: dict, manifest_sha: str) -> tuple[Pack, bool]:
    """Load the pack for this recipe, building it if absent. Returns (pack, built_now)."""
    if not r.data.repeat:
        info, _ = split_phases(r, manifest)
        if not info["covered_without_repetition"]:
            short = "; ".join(f"phase {p} needs {ph['tokens_needed']:,} tokens, {ph['tokens_available']:,} available"
                              for p, ph in info["phases"].items())
            raise DataError(f"{data_dir}: corpus too small for the recipe without repetition ({short}); "
                            "set data.repeat = true or add data")
    key = pack_key(r, manifest_sha)
    directory = Path(data_dir) / PACKS / key
    built = False
    if not (directory / "pack.json").is_file():
        info, rows = split_phases(r, manifest)
        info["key"] = key
        built = _write_pack(directory, info, rows)
    try:
        info = json.loads((directory / "pack.json").read_text())
        rows = {p: np.load(directory / f"phase{p}.npy", allow_pickle=False) for p in (1, 2)}
    except (ValueError, OSError) as e:
        raise DataError(f"{directory}: corrupt pack ({e}); delete it and re-run `tst prepare`") from None
    return Pack(directory, info, rows), built
