"""TST against a next-token baseline at equal FLOPs, several seeds, through the real CLI.

Every configuration is the ablation base recipe (recipes/ablations/s4.toml) with `--set` overrides, trained on a
real corpus from ../shared/data; every run has the same steps, batch and model, so equal steps are equal FLOPs.
For each seed the runs are compared with `tst compare` (reference: that seed's baseline); the summary gives each
configuration's final held-out loss per seed and the equal-loss speed-up, and the plot of the first seed.

    python benchmarks/bench_tst_vs_baseline.py --out benchmarks/results/tst_vs_baseline   # defaults below
    python benchmarks/bench_tst_vs_baseline.py --configs baseline,s2 --seeds 0 --steps 300  # a quick look
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "sotu.jsonl.gz"
BASE = ROOT / "recipes" / "ablations" / "s4.toml"

CONFIGS = {
    "baseline": ["tst.bag_size=1", "tst.ratio=0.0"],
    "s2": ["tst.bag_size=2", "tst.ratio=0.3"],
    "s4": ["tst.bag_size=4", "tst.ratio=0.3"],
    "s2-r0.2": ["tst.bag_size=2", "tst.ratio=0.2"],
    "s6": ["tst.bag_size=6", "tst.ratio=0.3"],
    "output-only-s2": ["tst.bag_size=2", "tst.ratio=0.3", 'tst.mode="output"'],
    "input-only-s2": ["tst.bag_size=2", "tst.ratio=0.3", 'tst.mode="input"'],
    "s2-r0.1": ["tst.bag_size=2", "tst.ratio=0.1"],
    "s3": ["tst.bag_size=3", "tst.ratio=0.3"],
}


def tst(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tstcli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="baseline,s2,s4")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--corpus", type=Path, action="append", help="corpus file or directory (repeatable; default: "
                    "the State of the Union addresses, the largest single corpus in ../shared/data)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every run")
    ap.add_argument("--skip-missing", action="store_true", help="summarise the runs already complete; train none")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tst_vs_baseline")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    corpora = args.corpus or [CORPUS]
    runs_dir = args.out / "runs"
    common = ["data.sources=[" + ", ".join(f'"{c}"' for c in corpora) + "]", f'data.dir="{args.out / "data"}"', f"train.steps={args.steps}",
              f"train.warmup_steps={max(1, args.steps // 20)}", f"eval.every={max(1, args.steps // 20)}",
              f"checkpoint.every={args.steps}", *args.extra]
    summary = {"corpus": [str(c) for c in corpora], "steps": args.steps, "base": str(BASE.relative_to(ROOT)),
               "overrides": common, "results": {}}
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.configs.split(",")
    for seed in seeds:
        dirs = []
        for name in names:
            run = runs_dir / f"{name}-seed{seed}"
            if not (run / "metrics.jsonl").exists() or '"kind": "train", "step": %d,' % args.steps not in \
                    (run / "metrics.jsonl").read_text():
                if args.skip_missing:
                    continue
                sets = [x for s in common + CONFIGS[name] + [f"run.seed={seed}", f'run.name="{name}"']
                        for x in ("--set", s)]
                t0 = time.time()
                r = tst("train", str(BASE), "--run-dir", str(run), *sets, "--json")
                if r.returncode != 0:
                    sys.exit(f"{name} seed {seed} failed:\n{r.stderr[-2000:]}")
                print(f"{name} seed {seed}: {json.loads(r.stdout)['final_val_loss']:.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
            dirs.append(str(run))
        png = [] if seed != seeds[0] else ["--out", str(args.out / "curves.png")]
        r = tst("compare", *dirs, "--json", *png)
        if r.returncode != 0:
            sys.exit(r.stderr)
        summary["results"][str(seed)] = json.loads(r.stdout)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{'config':<16}" + "".join(f"{'seed ' + str(s) + ' loss':>14}{'speed-up':>10}" for s in seeds))
    for name in names:
        cells = ""
        for s in seeds:
            row = next((r for r in summary["results"][str(s)]["runs"] if r["run"] == f"{name}-seed{s}"), None)
            if row is None:
                cells += f"{'-':>14}{'':>10}"
                continue
            cells += f"{row['final_val_loss']:>14.4f}" + (f"{row['speedup']:>9.2f}x" if row["speedup"] else
                                                          f"{'never':>10}")
        print(f"{name:<16}{cells}")


if __name__ == "__main__":
    main()
