"""AdamW against Muon, each with and without TST, at equal FLOPs, through the real CLI; and Muon's step-time
overhead at d384.

1. Learning-rate grid (seed 0, no TST): AdamW's `train.lr` over --adamw-lrs; Muon's `train.muon_lr` over --muon-lrs
   (its AdamW part — embeddings, head, norms — at the base recipe's lr). The best final held-out loss picks each
   optimizer's rate.
2. At the picked rates: {adamw, muon} x {baseline (s=1), TST (s=4, ratio 0.3)} x --seeds. Every run has the same
   model, batch and steps, so equal steps are equal model FLOPs (Muon's Newton–Schulz matmuls are extra work of
   the optimizer, counted in part 3, not in the model FLOPs).
3. Step time at d384 (6 layers, 6 heads, seq 256, batch 8, fp32, eager), AdamW and Muon trainers built in one
   process and timed alternately, the median of --timing-steps steps each.

    python benchmarks/bench_optimizers.py --out benchmarks/results/optimizers    # defaults below
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "sotu.jsonl.gz"
BASE = ROOT / "recipes" / "ablations" / "s4.toml"
TST = {"baseline": ["tst.bag_size=1", "tst.ratio=0.0"], "tst": ["tst.bag_size=4", "tst.ratio=0.3"]}


def train(run: Path, sets: list[str]) -> float:
    """Final held-out loss of a run (trained once; an existing finished run is read back)."""
    summary = run / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())["final_val_loss"]
    args = [x for s in sets for x in ("--set", s)]
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "tstcli", "train", str(BASE), "--run-dir", str(run), *args, "--json"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit(f"{run.name} failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout)
    summary.write_text(json.dumps(out) + "\n")
    print(f"{run.name}: {out['final_val_loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    return out["final_val_loss"]


def step_times(steps: int) -> dict:
    """Median seconds per optimizer step of AdamW and Muon trainers at d384, timed alternately in this process."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import small_recipe

    from tstcli.prep.prepare import prepare
    from tstcli.train.session import local_trainer

    torch.set_num_threads(2)
    shape = {"model.dim": 384, "model.n_layers": 6, "model.n_heads": 6, "model.n_kv_heads": 6,
             "model.max_seq_len": 256, "train.seq_len": 256, "train.batch_size": 8, "tst.bag_size": 1,
             "tst.ratio": 0.0, "train.steps": 10 ** 6, "train.warmup_steps": 10, "data.sources": [str(CORPUS)],
             "data.vocab_size": 4096}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(small_recipe(data, **shape).data, data, log=lambda *_: None)
        trainers = {name: local_trainer(small_recipe(data, **shape, **{"train.optimizer": name}),
                                        Path(tmp) / name, hooks=[]) for name in ("adamw", "muon")}
        times: dict = {name: [] for name in trainers}
        for step in range(1, steps + 3):
            for name, t in trainers.items():
                t0 = time.perf_counter()
                out = t.train_step(step)
                float(out.loss)
                if step > 2:  # the first steps allocate
                    times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"step_s": med, "muon_over_adamw": med["muon"] / med["adamw"], "steps_timed": steps,
            "shape": "dim 384, 6 layers, 6 heads, seq 256, batch 8, vocab 4096, fp32, eager, 2 threads"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--adamw-lrs", default="1e-3,3e-3,1e-2")
    ap.add_argument("--muon-lrs", default="0.002,0.005,0.01,0.02,0.05")
    ap.add_argument("--timing-steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "optimizers")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    runs.mkdir(exist_ok=True)
    common = [f'data.sources=["{CORPUS}"]', f'data.dir="{args.out / "data"}"', f"train.steps={args.steps}",
              f"train.warmup_steps={max(1, args.steps // 20)}", f"eval.every={max(1, args.steps // 10)}",
              f"checkpoint.every={args.steps}", 'train.dtype="fp32"']
    summary: dict = {"corpus": str(CORPUS), "steps": args.steps, "base": str(BASE.relative_to(ROOT)),
                     "overrides": common, "grid": {"adamw": {}, "muon": {}}, "runs": {}}
    grid = {"adamw": [("train.lr", float(x)) for x in args.adamw_lrs.split(",")],
            "muon": [("train.muon_lr", float(x)) for x in args.muon_lrs.split(",")]}
    best = {}
    for opt, values in grid.items():
        for key, lr in values:
            name = f"{opt}-baseline-lr{lr:g}-seed0"
            loss = train(runs / name, common + TST["baseline"] + [f'train.optimizer="{opt}"', f"{key}={lr}",
                                                                    "run.seed=0"])
            summary["grid"][opt][f"{lr:g}"] = loss
        best[opt] = min(values, key=lambda kv: summary["grid"][opt][f"{kv[1]:g}"])
    summary["picked"] = {opt: {"key": k, "lr": v} for opt, (k, v) in best.items()}
    for seed in (int(s) for s in args.seeds.split(",")):
        for opt, (key, lr) in best.items():
            for mode, sets in TST.items():
                name = f"{opt}-{mode}-lr{lr:g}-seed{seed}"
                summary["runs"][name] = {"optimizer": opt, "tst": mode, "seed": seed, "lr": lr,
                                         "final_val_loss": train(runs / name, common + sets + [
                                             f'train.optimizer="{opt}"', f"{key}={lr}", f"run.seed={seed}"])}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["step_time_d384"] = step_times(args.timing_steps)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({"grid": summary["grid"], "picked": summary["picked"],
                      "final": {k: v["final_val_loss"] for k, v in summary["runs"].items()},
                      "step_time_d384": summary["step_time_d384"]}))


if __name__ == "__main__":
    main()
