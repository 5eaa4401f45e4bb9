"""`tst prepare` throughput and peak memory on the shared corpus.

Runs the real CLI (`python -m tstcli prepare`) in a child process on the five full corpus files of
`../shared/data/corpus/` (about 33 MB of text), and on a subset, so that peak RSS can be compared across corpus
sizes (it must not grow with the corpus). MB/s is raw (uncompressed UTF-8) text per wall-clock second, tokenizer
training included. Targets (issue #3): >= 5 MB/s on 2 cores, peak RSS < 1 GiB.

    python benchmarks/bench_prepare.py
    python benchmarks/bench_prepare.py --tokenizer PATH/tokenizer.json   # encoding only (no BPE training)
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus"
FULL = ["kjv.txt.gz", "sotu.jsonl.gz", "moby_dick.jsonl.gz", "python311_docs.jsonl.gz", "factbook.jsonl.gz"]
SUBSET = ["moby_dick.jsonl.gz", "kjv.txt.gz"]


def raw_bytes(files: list[Path]) -> int:
    total = 0
    for f in files:
        with gzip.open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                total += len(block)
    return total


def run(files: list[Path], tokenizer: str, vocab: int, tmp: Path, label: str) -> dict:
    label = label.replace(" ", "")
    recipe = tmp / f"{label}.toml"
    recipe.write_text(f"""[run]\nname = "{label}"\n[data]\nsources = {json.dumps([str(f) for f in files])}
dir = "{tmp / label}"\ntokenizer = "{tokenizer}"\nvocab_size = {vocab}\n""")
    t0 = time.perf_counter()
    # A fresh child per measurement: its ru_maxrss is that run's peak resident memory.
    code = ("import resource, sys; from tstcli.cli.app import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('RC', e.code, 'MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code, "prepare", str(recipe), "--json"], capture_output=True,
                       text=True, cwd=tmp)
    wall = time.perf_counter() - t0
    tail = p.stderr.strip().splitlines()[-1]
    assert tail.startswith("RC 0"), p.stderr[-2000:]
    out = json.loads(p.stdout)
    mb = raw_bytes(files) / 1e6
    return {"corpus": label, "files": len(files), "raw_mb": round(mb, 1), "wall_s": round(wall, 1),
            "mb_per_s": round(mb / wall, 2), "peak_rss_mib": round(int(tail.split()[-1]) / 1024),
            "train_tokens": out["train_tokens"], "val_tokens": out["val_tokens"], "tokenizer": tokenizer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default="bpe")
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # full x2 lists every file twice: twice the text, so peak memory must stay where "full" was.
        for label, names in (("subset", SUBSET), ("full", FULL), ("full x2", FULL + FULL)):
            res = run([CORPUS / n for n in names], args.tokenizer, args.vocab, Path(tmp), label)
            res["corpus"] = label
            results.append(res)
            print(json.dumps(res), flush=True)
    print(f"\nos.cpu_count() = {os.cpu_count()}")
    print("| corpus | raw MB | wall s | MB/s | peak RSS MiB | train tokens |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['corpus']} ({r['files']} files) | {r['raw_mb']} | {r['wall_s']} | {r['mb_per_s']} | "
              f"{r['peak_rss_mib']} | {r['train_tokens']:,} |")


if __name__ == "__main__":
    main()
