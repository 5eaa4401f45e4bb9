"""Checkpoint checksums cost about a read of the checkpoint (issue #17: "hashing at disk speed").

Writes a 1 GB checkpoint-like folder (safetensors files of random fp32 tensors, FILES of them, as N ranks would
write) and times, side by side in one run: reading every byte (the floor any verification pays), `checksums` (the
sha256 `tst` records at save, hashed on parallel threads) and `verify_files` (what resume/eval/export/sample run).
The files were just written, so they are in the page cache unless --drop-caches (root; Linux) empties it before
each measurement: without it the figures are the CPU cost of hashing, with it they include the disk.

    python benchmarks/bench_checksum.py
    python benchmarks/bench_checksum.py --gb 1 --files 8 --drop-caches
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tstcli.run.integrity import checksums, verify_files  # noqa: E402


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def read_all(directory: Path, files: list[str]) -> None:
    def read(name):
        with open(directory / name, "rb", buffering=0) as fh:
            while fh.read(1 << 22):
                pass
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        list(pool.map(read, files))


def timed(fn, drop: bool) -> float:
    if drop:
        drop_caches()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--drop-caches", action="store_true")
    args = ap.parse_args()
    total = int(args.gb * 1e9)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        d = Path(tmp)
        files = []
        per_file = total // args.files // 4  # fp32 elements
        for i in range(args.files):
            name = f"shard-{i:05d}-model.safetensors"
            save_file({"w": torch.randn(per_file)}, str(d / name))
            files.append(name)
        size = sum((d / f).stat().st_size for f in files)
        recorded = checksums(d, files)
        t_read = timed(lambda: read_all(d, files), args.drop_caches)
        t_hash = timed(lambda: checksums(d, files), args.drop_caches)
        t_verify = timed(lambda: verify_files(d, recorded), args.drop_caches)
    gb = size / 1e9
    print(json.dumps({"bytes": size, "files": args.files, "page_cache_dropped": args.drop_caches,
                      "cpus": os.cpu_count(), "read_s": round(t_read, 3), "read_gb_per_s": round(gb / t_read, 2),
                      "checksums_s": round(t_hash, 3), "checksums_gb_per_s": round(gb / t_hash, 2),
                      "verify_s": round(t_verify, 3), "hash_over_read": round(t_hash / t_read, 2)}, indent=1))


if __name__ == "__main__":
    main()
