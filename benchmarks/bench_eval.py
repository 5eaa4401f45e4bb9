"""`tst eval` vs lm-evaluation-harness's HFLM: same model, same items, same device and dtype, timed side by side.

    python benchmarks/bench_eval.py --run RUN_DIR --export EXPORT_DIR --limit 200
    python benchmarks/bench_eval.py --run RUN_DIR --export EXPORT_DIR            # every item (slow)
    python benchmarks/bench_eval.py --run RUN_DIR --export EXPORT_DIR --device cuda --dtype bf16 --limit 500
    python benchmarks/bench_eval.py --run RUN_DIR --export EXPORT_DIR --tasks hellaswag --repeats 3  # medians

The harness reads the same local files through the task YAMLs of tests/test_eval_parity.py. Prints wall time of
each tool per task, the speed-up, and on how many items the two agree (every one in fp32; in bf16 close calls may
differ). Targets: tst eval >= 1.5x faster than the harness (issue #4), >= 3x on the CPU (issue #28).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
_threads = os.environ.get("OMP_NUM_THREADS")
from test_eval_parity import MMLU_SUBJECTS, SHARED, _harness_tasks  # noqa: E402
if _threads is None:  # the test suite's conftest sets one thread per test process: both tools here use every core
    os.environ.pop("OMP_NUM_THREADS", None)

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # tst eval's --dtype -> the harness's dtype
PAIRS = {"tst_hellaswag": ("hellaswag", None), "tst_arc_easy": ("arc_easy", None),
         "tst_arc_challenge": ("arc_challenge", None), **{f"tst_mmlu_{s}": ("mmlu", s) for s in MMLU_SUBJECTS}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tasks", default="hellaswag,arc_easy,arc_challenge,mmlu", help="subset to time")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for both tools")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights and compute, for both tools")
    ap.add_argument("--repeats", type=int, default=1,
                    help="pairs per task, the first tool alternating; times and speed-up are the medians")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _harness_tasks(tmp)
        for harness_task, (task, subject) in PAIRS.items():
            if subject not in (None, MMLU_SUBJECTS[0]) or task not in args.tasks.split(","):
                continue  # MMLU: time one subject per tool (tst eval scores all 57 otherwise)

            def harness():
                t0 = time.perf_counter()
                h = simple_evaluate(model="hf", model_args=f"pretrained={args.export},dtype={DTYPES[args.dtype]}",
                                    tasks=[harness_task], task_manager=TaskManager(include_path=str(tmp)),
                                    limit=args.limit, batch_size=args.batch_size, device=args.device,
                                    log_samples=True)
                return time.perf_counter() - t0, sorted(h["samples"][harness_task], key=lambda s: s["doc_id"])

            def tst():
                samples = tmp / "s.jsonl"
                cmd = [sys.executable, "-m", "tstcli", "eval", str(args.export), "--bench",
                       f"mmlu:{subject}" if subject else task, "--data-dir", str(SHARED), "--batch-size",
                       str(args.batch_size), "--samples", str(samples), "--device", args.device, "--dtype", args.dtype]
                if args.limit:
                    cmd += ["--limit", str(args.limit)]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                t = time.perf_counter() - t0
                assert r.returncode == 0, r.stderr[-2000:]
                ours = [json.loads(line) for line in samples.read_text().splitlines()]
                return t, [x for x in ours if x.get("subject") == subject]

            pairs = []  # (harness s, tst s); the first tool alternates, so a slow spell of the machine hits both
            for k in range(args.repeats):
                (t_harness, theirs), (t_tst, ours) = ((harness(), tst()) if k % 2 == 0 else
                                                      reversed((tst(), harness())))
                pairs.append((t_harness, t_tst))
            same = sum(a["acc"] == b["acc"] for a, b in zip(ours, theirs))  # bf16: the two may differ on close calls
            agree = same == len(ours) == len(theirs)
            t_harness, t_tst = (statistics.median(t[i] for t in pairs) for i in (0, 1))
            speedup = statistics.median(h / t for h, t in pairs)
            rows.append((task + (f":{subject}" if subject else ""), len(theirs), t_harness, t_tst, speedup, agree))
            print(json.dumps({"task": rows[-1][0], "items": len(theirs), "harness_s": round(t_harness, 1),
                              "tst_s": round(t_tst, 1), "speedup": round(speedup, 2),
                              "speedups": [round(h / t, 2) for h, t in pairs], "predictions_identical": agree,
                              "same_predictions": same, "device": args.device, "dtype": args.dtype}), flush=True)
    print("\n| task | items | lm-eval HFLM | tst eval | speed-up | same predictions |\n|---|---|---|---|---|---|")
    for name, n, th, tt, speedup, ok in rows:
        print(f"| {name} | {n} | {th:.1f} s | {tt:.1f} s | {speedup:.2f}x | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
