"""Peak memory of `tst export`, and of `tst eval` and `tst sample` on that export, for a >= 300M-parameter run
(issue #28's target: peak RSS <= 2 x the exported weights + 1 GiB for each).

Trains two steps of the tiny recipe reshaped to ~0.3B parameters (only to have a real checkpoint: weights and both
Adam moments), then runs each verb as its own process and reads that process's peak RSS from the kernel
(`os.wait4`'s ru_maxrss). `--python` runs the verbs with another interpreter (e.g. the venv of an older checkout,
for a before/after figure on the same run). The last line is JSON: `peak_rss_mib` (the largest of the three),
`export_mib`, `bound_mib`, and each verb's figure.

    python benchmarks/bench_export.py                       # bf16 export, ~0.31B parameters
    python benchmarks/bench_export.py --python /old/.venv/bin/python
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
SHAPE = ["model.dim=1024", "model.n_layers=26", "model.n_heads=16", "model.n_kv_heads=8", "model.ffn_dim=2816",
         "model.max_seq_len=256", "train.steps=2", "train.batch_size=2", "train.seq_len=64", "train.warmup_steps=1",
         "train.compile=false", "train.dtype=\"fp32\"", "checkpoint.every=2", "eval.every=2", "eval.batches=1", "train.log_every=1"]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one process; exits with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="the export's weight dtype")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs export/eval/sample")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = [x for s in SHAPE for x in ("--set", s)]
        train = [sys.executable, "-m", "tstcli", "train", str(ROOT / "recipes" / "tiny.toml"), "--run-dir",
                 f"{tmp}/run", "--set", f'data.dir="{tmp}/data"', *sets]
        _, train_s = run_measured(train)
        tst = [a.python, "-m", "tstcli"]
        export_rss, export_s = run_measured([*tst, "export", f"{tmp}/run", "--out", f"{tmp}/export", "--dtype",
                                             a.dtype])
        export_mib = sum(f.stat().st_size for f in Path(f"{tmp}/export").glob("*.safetensors")) / 2**20
        params = export_mib * 2**20 / (2 if a.dtype == "bf16" else 4)
        corpus = Path(f"{tmp}/corpus.txt")  # a few rows of held-out text: the figure is memory, not a loss
        with gzip.open(ROOT / "tstcli" / "corpus" / "kjv.txt.gz", "rt") as f:
            corpus.write_text(f.read(6000))
        eval_rss, eval_s = run_measured([*tst, "eval", f"{tmp}/export", "--corpus", str(corpus), "--batch-size", "4"])
        sample_rss, sample_s = run_measured([*tst, "sample", f"{tmp}/export", "--prompt", "Call me Ishmael.",
                                             "--max-new-tokens", "16", "--seed", "0"])
    bound = 2 * export_mib + 1024
    result = {"params_m": round(params / 1e6, 1), "export_dtype": a.dtype, "export_mib": round(export_mib, 1),
              "bound_mib": round(bound, 1), "export_peak_rss_mib": round(export_rss, 1),
              "eval_peak_rss_mib": round(eval_rss, 1), "sample_peak_rss_mib": round(sample_rss, 1),
              "peak_rss_mib": round(max(export_rss, eval_rss, sample_rss), 1),
              "within_bound": max(export_rss, eval_rss, sample_rss) <= bound,
              "seconds": {"train": round(train_s, 1), "export": round(export_s, 1), "eval": round(eval_s, 1),
                          "sample": round(sample_s, 1)}, "python": a.python}
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
