"""Data at 2T tokens, simulated (issue #16): the packer and the loader of one rank must not grow with the corpus.

Builds a synthetic prepared data directory of 2 x 10^12 training tokens: a manifest and sparse shard files of 2^30
tokens each (about 1,863 files whose apparent size is 4-8 TB; nothing is written, the file system stores holes;
10b-a1b's two mixture entries, DCLM and FineWeb-Edu, hold 10^12 tokens each).
Then, for the 10b-a1b and 3b recipes, and for rank 0 and rank 63 of 64, a fresh child process measures:
the dry-run plan, opening the data (manifest, verification of sizes, memory maps of every shard), building the pack
(the phase split), and the rank's rows at steps 1, 100,000 and the last step of each phase: the row offsets (the
loader's own work, `offsets_s`) and the rows read from the memory maps (`s`, which on sparse files is the kernel
zero-filling the pages of holes, not disk). Peak RSS growth is the child's ru_maxrss minus its RSS after imports. The last stdout line is one JSON
object with `max_rss_growth_mib`, the largest growth measured.

    python benchmarks/bench_scale.py                  # 2T tokens
    python benchmarks/bench_scale.py --tokens 2e11    # a tenth, to see what does (not) grow
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD = 1 << 30


def make_data(directory: Path, tokens: int, vocab: int, entries: list[str]) -> None:
    """A manifest and sparse shards: what `tst prepare` would leave for `tokens` training tokens, split evenly over
    the mixture `entries` (or one corpus when there are none)."""
    from tstcli.data import shards
    from tstcli.files import write_json_atomic
    from tstcli.prep import shard_writer
    dtype = shard_writer.token_dtype(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    parts = []
    for e, name in enumerate(entries or [None]):
        listing = {}
        for split, total in (("train", tokens // max(len(entries), 1)), ("val", SHARD // 4)):
            listing[split], left, k = [], total, 0
            while left > 0:
                n = min(SHARD, left)
                file = f"{split}{'' if name is None else '-' + name}-u{e:03d}{k:03d}-00000.bin"
                with open(directory / file, "wb") as fh:
                    fh.truncate(n * dtype.itemsize)  # a hole: no block is written
                listing[split].append({"file": file, "tokens": n, "sha256": "0" * 64})
                left, k = left - n, k + 1
        parts.append((name, listing, {s: len(v) for s, v in listing.items()}))
    manifest = {"format": shards.FORMAT_VERSION, "inputs": {"synthetic": tokens}, "sources": [],
                "tokenizer": {"file": "tokenizer.json", "sha256": "0" * 64, "eot_id": 0}, "vocab_size": vocab,
                "dtype": dtype.str, "characters": 0,
                "splits": {s: {"documents": sum(d[s] for _, _, d in parts),
                               "tokens": sum(x["tokens"] for _, v, _ in parts for x in v[s]),
                               "shards": [x for _, v, _ in parts for x in v[s]]} for s in ("train", "val")}}
    if entries:
        manifest["mix"] = shard_writer.mix_layout(parts)
    write_json_atomic(directory / shards.MANIFEST, manifest)


def child(recipe: str, data_dir: str, rank: int, world: int) -> dict:
    """One rank's start-up and batches, in this (fresh) process."""
    from tstcli import recipe as recipes
    from tstcli.data import packing, shards
    from tstcli.data.loader import PhaseLoader, batch_offsets
    from tstcli.train.dryrun import build_plan

    def rss_mib() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    r = recipes.load(ROOT / "recipes" / f"{recipe}.toml", [f'data.dir="{data_dir}"'])
    base = rss_mib()
    out: dict = {"recipe": recipe, "rank": rank, "world": world, "rss_after_imports_mib": round(base, 1)}
    t = time.perf_counter()
    manifest = shards.read_manifest(Path(data_dir))
    plan = build_plan(r, manifest["vocab_size"], manifest, [world])
    out["dry_run_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    shards.verify(Path(data_dir), manifest, full=False)
    store = shards.TokenStore(Path(data_dir), manifest, "train")
    out["open_data_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    pack, _ = packing.ensure_pack(r.plan, r.run.seed, r.data, Path(data_dir), manifest,
                                  shards.manifest_sha256(Path(data_dir)))
    out["pack_s"] = round(time.perf_counter() - t, 4)
    out["rows"] = {p: len(pack.rows[p]) for p in (1, 2)}
    out["train_tokens"] = manifest["splits"]["train"]["tokens"]
    out["covered_without_repetition"] = plan["coverage"]["covered_without_repetition"]
    batches = {}
    for p in (1, 2):
        loader = PhaseLoader(store, pack.rows[p], pack.widths[p], r.run.seed, p, r.train.batch_size)
        steps = plan["phases"][str(p)]["steps"]
        for step in sorted({1, 100_000, steps}):
            t = time.perf_counter()
            offsets, epoch = batch_offsets(pack.rows[p], r.run.seed, p, step - 1, r.train.batch_size, rank, world)
            t_offsets = time.perf_counter() - t
            rows, _ = loader.batch(step - 1, rank, world)
            batches[f"phase{p}_step{step}"] = {"offsets_s": round(t_offsets, 4),
                                               "s": round(time.perf_counter() - t, 4), "rows": len(rows),
                                               "epoch": epoch}
    out["batches"] = batches
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_mib"] = round(peak, 1)
    out["rss_growth_mib"] = round(peak - base, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=float, default=2e12)
    ap.add_argument("--child", nargs=4, metavar=("RECIPE", "DATA_DIR", "RANK", "WORLD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        recipe, data_dir, rank, world = args.child
        print(json.dumps(child(recipe, data_dir, int(rank), int(world))))
        return
    results = []
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:
        from tstcli import recipe as recipes
        for recipe, vocab in (("10b-a1b", 151_669), ("3b", 128_256)):
            data = Path(tmp) / recipe
            t = time.perf_counter()
            entries = [e.name for e in recipes.load(ROOT / "recipes" / f"{recipe}.toml").data.mix]
            make_data(data, int(args.tokens), vocab, entries)
            made = time.perf_counter() - t
            for rank in (0, 63):
                p = subprocess.run([sys.executable, __file__, "--child", recipe, str(data), str(rank), "64"],
                                   capture_output=True, text=True)
                if p.returncode:
                    sys.exit(p.stderr[-3000:])
                res = json.loads(p.stdout.strip().splitlines()[-1])
                res["synthetic_data_s"] = round(made, 1)
                results.append(res)
                print(json.dumps(res))
    print(json.dumps({"tokens": int(args.tokens), "max_rss_growth_mib": max(r["rss_growth_mib"] for r in results),
                      "max_pack_s": max(r["pack_s"] for r in results),
                      "max_offsets_s": max(b["offsets_s"] for r in results for b in r["batches"].values()),
                      "max_batch_s": max(b["s"] for r in results for b in r["batches"].values())}))


if __name__ == "__main__":
    main()
