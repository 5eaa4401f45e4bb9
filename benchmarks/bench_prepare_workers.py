"""Distributed prepare throughput (issue #16): N worker processes vs one, each with one tokenizer thread.

The corpus is `--copies` copies of `sotu.jsonl.gz` from ../shared/data/corpus, each its own work unit
(`data.unit_mb = 1`; equal units: the measure is the workers' parallel efficiency, not the balance of unequal
files). The tokenizer is given (a BPE trained once
beforehand), so only reading, encoding and writing are timed. Every process runs with TOKENIZERS_PARALLELISM=false
(one encoding thread) and is pinned to one core with `taskset -c I` (worker I on core I mod cores). One worker:
`tst prepare`; N workers: `tst prepare --worker I --workers N` started together, then `--merge` (timed too). Both
runs are timed side by side, alternated `--repeat` times in one invocation, and must give byte-identical
manifests.

    python benchmarks/bench_prepare_workers.py                # 2 workers, 8 copies (86 MB), 3 alternated runs
    python benchmarks/bench_prepare_workers.py --workers 2 --copies 16 --repeat 5
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOTU = ROOT.parent / "shared" / "data" / "corpus" / "sotu.jsonl.gz"


def tst(args: list, core: int | None) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    pin = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
    return subprocess.Popen([*pin, sys.executable, "-m", "tstcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)


def finish(p: subprocess.Popen) -> None:
    _, err = p.communicate()
    if p.returncode:
        sys.exit(err[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        corpus.mkdir()
        for i in range(args.copies):
            shutil.copy(SOTU, corpus / f"sotu-{i}.jsonl.gz")
        raw_mb = args.copies * len(gzip.decompress(SOTU.read_bytes())) / 1e6

        def recipe(name: str, tokenizer: str) -> Path:
            path = tmp / f"{name}.toml"
            path.write_text(f'[run]\nname = "{name}"\n[data]\nsources = ["{corpus}"]\ndir = "{tmp / name}"\n'
                            f'tokenizer = "{tokenizer}"\nvocab_size = 4096\ntokenizer_train_chars = 2000000\n'
                            'unit_mb = 1\n')  # each 3.6 MB copy its own work unit
            return path

        finish(tst(["prepare", recipe("bpe", "bpe")], None))  # the tokenizer both runs encode with
        tok = str(tmp / "bpe" / "tokenizer.json")
        runs = []
        for k in range(args.repeat):  # alternated, so that drifts of a noisy machine hit both alike
            one_dir, many_dir = f"one{k}", f"many{k}"
            t = time.perf_counter()
            finish(tst(["prepare", recipe(one_dir, tok)], 0))
            one = time.perf_counter() - t
            many = recipe(many_dir, tok)
            t = time.perf_counter()
            procs = [tst(["prepare", many, "--worker", i, "--workers", args.workers], i % cores)
                     for i in range(args.workers)]
            for p in procs:
                finish(p)
            tokenized = time.perf_counter() - t
            finish(tst(["prepare", many, "--workers", args.workers, "--merge"], 0))
            total = time.perf_counter() - t
            same = (tmp / one_dir / "manifest.json").read_bytes() == (tmp / many_dir / "manifest.json").read_bytes()
            runs.append({"one_worker_s": round(one, 1), "n_workers_s": round(total, 1),
                         "n_workers_tokenize_s": round(tokenized, 1), "speedup": round(one / total, 2),
                         "identical_manifests": same})
            print(json.dumps(runs[-1]))
    speedups = sorted(r["speedup"] for r in runs)
    print(json.dumps({"cores": cores, "workers": args.workers, "raw_mb": round(raw_mb, 1), "runs": len(runs),
                      "one_worker_mb_per_s_median": round(raw_mb / statistics.median(r["one_worker_s"] for r in runs), 2),
                      "speedup_median": statistics.median(speedups), "speedup_min": speedups[0],
                      "speedup_max": speedups[-1], "identical_manifests": all(r["identical_manifests"] for r in runs)}))

if __name__ == "__main__":
    main()
