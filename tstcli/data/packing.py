"""Per-phase packing: which rows of the flat training stream each phase reads (docs/design.md, "Data").

The training stream is cut, shard by shard, into *chunks* of `g` consecutive spans of `L+1` tokens, where
`g = s` for the full and input modes (a chunk is exactly one phase-1 row of `s·(L+1)` tokens) and the fewest spans
covering `L+s` tokens for the output mode. A seeded order over the chunks (`order.Bijection`) gives phase 1 its
first chunks and phase 2 the rest, so the phases are disjoint and both draw from across the whole corpus; a phase-2
chunk yields `g` phase-2 rows of `L+1` tokens. The rows are functions from index to offset (`rows.py`), built from
the manifest's shard sizes in microseconds and holding no per-row array, whatever the corpus size; `pack.json`
under `<data_dir>/packs/<key>/` records the split and its coverage. Changing `s`, `L`, `ratio`, steps or batch
re-packs at once; tokens are never re-read.
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

from tstcli.data.order import Bijection
from tstcli.data.rows import Chunks, Concat, Drawn, PhaseRows
from tstcli.errors import DataError, environment_fault
from tstcli.files import write_json_atomic
from tstcli.phases import PhasePlan
from tstcli.recipe import DataConfig, MixEntry

PACKS = "packs"
ORDER = 2  # the row-order function's version (2: Feistel bijections; 1: materialised permutations, in earlier versions)


@dataclass(frozen=True)
class Pack:
    directory: Path
    info: dict
    rows: dict  # phase -> row set (`rows.py`): row index -> start offset

    @property
    def widths(self) -> dict[int, int]:
        return {int(k): v for k, v in self.info["widths"].items()}


def pack_key(plan: PhasePlan, seed: int, mix: list[MixEntry], manifest_sha: str) -> str:
    p1 = plan.phase1
    spec = {"manifest": manifest_sha, "s": p1.bag_size, "L": p1.seq_len, "mode": p1.mode, "steps": plan.steps,
            "phase1_steps": plan.phase1_steps, "batch": plan.batch_size, "seed": seed, "order": ORDER}
    if mix:  # only then: the packs of runs without a mixture keep their names
        spec["mix"] = [[e.name, e.weight_in(1), e.weight_in(2)] for e in mix]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _phase1_chunks(n: int, need: dict) -> tuple[int, bool]:
    """How many of `n` chunks phase 1 takes for `need` = {phase: chunks}, and whether both needs are covered
    without repetition."""
    wanted = need[1] + need[2]
    if n >= wanted:
        return need[1], True  # enough data: phase 1 takes exactly what it needs, phase 2 everything else
    # Too little: split in proportion to need, each phase repeats within its own part.
    c1 = round(n * need[1] / wanted) if wanted else 0
    return min(max(c1, 1 if need[1] else 0), n - (1 if need[2] else 0)), False


def _phase_rows(chunks: Chunks, c1: int, key: tuple, g: int, span: int) -> dict:
    """Phase 1: chunks 0..c1-1 of the seeded order, one row each; phase 2: the others, `g` rows of `span` each."""
    order = Bijection(chunks.count, key)
    return {1: PhaseRows(chunks, order, 0, c1, 1, chunks.size),
            2: PhaseRows(chunks, order, c1, chunks.count - c1, g, span)}


def _phase_info(steps: int, width: int, rows: int, rows_needed: int) -> dict:
    return {"steps": steps, "row_width": width, "rows": rows, "rows_needed": rows_needed,
            "tokens_needed": rows_needed * width, "tokens_available": rows * width,
            "epochs": (rows_needed / rows) if rows else 0.0}


def _geometry(plan: PhasePlan) -> tuple[int, int, int]:
    """(g, span, chunk): phase-1 rows cover g spans of L+1 tokens; a phase-2 row is one span; a chunk, one
    phase-1 row."""
    return plan.phase1.spans, plan.specs[2].row_width, plan.phase1.row_width


def split_phases(plan: PhasePlan, seed: int, mix: list[MixEntry], manifest: dict) -> tuple[dict, dict]:
    """Decide the phase split: returns (info, rows) without touching the disk."""
    if mix:
        return split_mixture(plan, seed, mix, manifest)
    g, span, chunk = _geometry(plan)
    widths, steps, need_rows = plan.row_widths, plan.phase_steps, plan.rows_needed
    need_chunks = {1: need_rows[1], 2: math.ceil(need_rows[2] / g)}
    chunks = Chunks([x["tokens"] for x in manifest["splits"]["train"]["shards"]], chunk)
    n = chunks.count
    if n < (need_chunks[1] > 0) + (need_chunks[2] > 0):
        raise DataError(f"training split has {manifest['splits']['train']['tokens']} tokens, fewer than one row of "
                        f"{chunk} tokens per phase: add data or lower train.seq_len / tst.bag_size")
    c1, covered = _phase1_chunks(n, need_chunks)
    rows = _phase_rows(chunks, c1, (seed, 0x7057), g, span)
    phases = {str(p): _phase_info(steps[p], widths[p], len(rows[p]), need_rows[p]) for p in (1, 2)}
    info = {"widths": widths,
            "phases": phases, "train_tokens": manifest["splits"]["train"]["tokens"],
            "covered_without_repetition": covered}
    return info, rows


def proportional_split(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights`, in whole numbers that sum to `total` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    if total == 0 or w.sum() == 0:
        return [0] * len(weights)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[:total - int(out.sum())]] += 1
    return out.tolist()


def split_mixture(plan: PhasePlan, seed: int, mix: list[MixEntry], manifest: dict) -> tuple[dict, dict]:
    """The phase split of a weighted mixture. Phase p's R_p rows are dealt to the entries in proportion to their
    phase-p weights (rows of a phase have one width, so row shares are token shares); each entry splits its own
    chunks between the phases as a corpus without a mixture does (disjoint), and its part holds exactly its rows,
    repeated in whole copies when short. A phase reads its pack once (one loader epoch), so the rows a run reads
    realise the weights to within one row per entry."""
    g, span, chunk = _geometry(plan)
    widths, steps, need_rows = plan.row_widths, plan.phase_steps, plan.rows_needed
    layout = {m["name"]: m for m in manifest.get("mix", [])}
    if [e.name for e in mix] != [m["name"] for m in manifest.get("mix", [])]:
        raise DataError("data.mix: the prepared data holds other mixture entries "
                        f"({', '.join(layout) or 'none'}); re-run `tst prepare RECIPE`")
    train_shards = manifest["splits"]["train"]["shards"]
    starts = np.concatenate([[0], np.cumsum([x["tokens"] for x in train_shards])]).astype(np.int64)
    share = {p: proportional_split(need_rows[p], [e.weight_in(p) for e in mix]) for p in (1, 2)}
    rows: dict = {1: [], 2: []}
    entries, covered = [], True
    for i, e in enumerate(mix):
        m = layout[e.name]["train"]
        chunks = Chunks([x["tokens"] for x in train_shards[m["first"]:m["first"] + m["count"]]], chunk,
                        int(starts[m["first"]]))
        need = {p: share[p][i] for p in (1, 2)}
        need_chunks = {1: need[1], 2: math.ceil(need[2] / g)}
        if chunks.count < (need_chunks[1] > 0) + (need_chunks[2] > 0):
            raise DataError(f"data.mix[{i}] ({e.name!r}): {m['tokens']} training tokens, fewer than one row of "
                            f"{chunk} tokens per phase it takes part in: add data, lower its weight or lower "
                            "train.seq_len / tst.bag_size")
        c1, enough = _phase1_chunks(chunks.count, need_chunks)
        own = _phase_rows(chunks, c1, (seed, 0x7057, i + 1), g, span)
        phases = {}
        for p in (1, 2):
            rows[p].append(Drawn(own[p], need[p], (seed, 0x7058, i + 1, p)))
            phases[str(p)] = {"weight": need[p] / need_rows[p] if need_rows[p] else 0.0,
                              **_phase_info(steps[p], widths[p], len(own[p]), need[p])}
        covered &= enough
        entries.append({"name": e.name, "train_tokens": m["tokens"], "start": int(starts[m["first"]]),
                        "end": int(starts[m["first"] + m["count"]]), "covered_without_repetition": enough,
                        "phases": phases})
    rows = {p: Concat(rows[p]) for p in (1, 2)}
    phases = {str(p): _phase_info(steps[p], widths[p], sum(x["phases"][str(p)]["rows"] for x in entries),
                                  need_rows[p]) for p in (1, 2)}
    info = {"widths": widths, "phases": phases, "train_tokens": manifest["splits"]["train"]["tokens"],
            "covered_without_repetition": covered, "mix": entries}
    return info, rows


def _write_pack(directory: Path, info: dict) -> bool:
    """Write `pack.json` under a folder name of this process's own and rename it into place; False when another
    process (a second rank or run on the same data) put the same pack there first."""
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        write_json_atomic(tmp / "pack.json", info)
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


def _shortfall(info: dict) -> str:
    """What runs short, for the error of data.repeat = false."""
    def needs(phases: dict) -> str:
        return "; ".join(f"phase {p} needs {ph['tokens_needed']:,} tokens, {ph['tokens_available']:,} available"
                         for p, ph in phases.items())
    if "mix" in info:
        return "; ".join(f"data.mix entry {e['name']!r} is too small for its weight without repetition "
                         f"({needs(e['phases'])})" for e in info["mix"] if not e["covered_without_repetition"])
    return f"corpus too small for the recipe without repetition ({needs(info['phases'])})"


def ensure_pack(plan: PhasePlan, seed: int, data: DataConfig, data_dir: Path, manifest: dict,
                manifest_sha: str) -> tuple[Pack, bool]:
    """The pack for this plan, seed and data (its `pack.json` written if absent). Returns (pack, written_now)."""
    info, rows = split_phases(plan, seed, data.mix, manifest)  # microseconds: the rows are functions, not arrays
    if not data.repeat and not info["covered_without_repetition"]:
        raise DataError(f"{data_dir}: {_shortfall(info)}; set data.repeat = true or add data")
    key = pack_key(plan, seed, data.mix, manifest_sha)
    directory = Path(data_dir) / PACKS / key
    info = {**info, "key": key, "order": ORDER}
    try:
        built = not (directory / "pack.json").is_file() and _write_pack(directory, info)
    except OSError as e:
        if environment_fault(e) is None:
            raise
        raise DataError(f"{data_dir}: this recipe needs a new pack ({PACKS}/{key}), which cannot be written there "
                        f"({e.strerror or e}); make data.dir writable, or copy the prepared data somewhere writable "
                        "and set data.dir to it") from None
    return Pack(directory, info, rows), built
