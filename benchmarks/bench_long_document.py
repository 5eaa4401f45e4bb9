"""`tst prepare` on a corpus holding one huge document: peak memory must stay bounded (issue #17, target < 1 GiB).

Writes a JSON-lines file whose first line is one document of SIZE_MB megabytes (the shared corpus's text repeated,
plain ASCII/UTF-8) followed by the Moby-Dick documents, then runs the real CLI in a child process (BPE training on
the default 10M-character sample, then tokenization) and reads the child's peak RSS (ru_maxrss). Before the fix a
200 MB document drove `tst prepare` past 14 GB.

    python benchmarks/bench_long_document.py                 # 200 MB
    python benchmarks/bench_long_document.py --size-mb 50
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus"


def write_corpus(path: Path, size_mb: int) -> int:
    with gzip.open(CORPUS / "kjv.txt.gz", "rt", encoding="utf-8") as fh:
        seed = fh.read()
    reps = size_mb * 1_000_000 // len(seed.encode()) + 1
    huge = (seed * reps)[: size_mb * 1_000_000]
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"text": huge}) + "\n")
        with gzip.open(CORPUS / "moby_dick.jsonl.gz", "rt", encoding="utf-8") as fh:
            out.writelines(fh)
    return len(huge)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--tokenizer", default="bpe", help="a tokenizer.json: encoding only (no BPE training pass)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "huge.jsonl"
        chars = write_corpus(src, args.size_mb)
        cmd = [sys.executable, "-m", "tstcli", "prepare", str(ROOT / "recipes" / "tiny.toml"), "--json",
               "--set", f'data.dir="{Path(tmp) / "data"}"', "--set", f'data.sources=["{src}"]',
               "--set", f'data.tokenizer="{args.tokenizer}"']
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"prepare failed ({r.returncode}): {r.stderr[-500:]}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = json.loads(r.stdout)
        print(json.dumps({"document_chars": chars, "peak_rss_mib": round(peak_kib / 1024, 1),
                          "seconds": round(seconds, 1), "train_tokens": out["train_tokens"],
                          "val_tokens": out["val_tokens"], "tokenizer": args.tokenizer, "target_mib": 1024}, indent=1))


if __name__ == "__main__":
    main()
