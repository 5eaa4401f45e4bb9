"""Documents as units: what `train.attention = "document"` costs in step time, and what the four combinations of
attention (causal, document) and bag boundaries (cross, document) do to held-out loss at equal FLOPs.

1. Step time on the CPU at two shapes — tiny (recipes/tiny.toml: dim 128, 4 layers, seq 128, batch 16) and d384
   (dim 384, 6 layers, 6 heads, seq 256, batch 8) — causal vs document attention (bags across boundaries), both
   trainers built in one process and timed alternately, compiled as training runs them; the median of
   --timing-steps phase-2 steps each. Target: document / causal <= 1.15.
2. Held-out loss: the ablation base recipe (recipes/ablations/s4.toml) on a corpus of short documents (KJV, one
   document per chapter: ~1,000 tokens, so a 4·129-token phase-1 row often holds a document end), the baseline (s=1)
   and TST s=4 under the four combinations, --seeds seeds, equal steps and model (equal FLOPs). Each run's final
   checkpoint is scored twice on the same held-out rows: with the causal mask (documents see their predecessors
   in the row, as `tst eval` of an export does) and with the document mask (each document alone, as inference sees
   a document): one protocol for every run, whatever it trained with.

    python benchmarks/bench_documents.py --out benchmarks/results/documents    # defaults below
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
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "kjv.txt.gz"
BASE = ROOT / "recipes" / "ablations" / "s4.toml"
CONFIGS = {
    "baseline": ["tst.bag_size=1", "tst.ratio=0.0"],
    "causal-cross": ['train.attention="causal"', 'tst.bag_boundaries="cross"'],
    "causal-document": ['train.attention="causal"', 'tst.bag_boundaries="document"'],
    "document-cross": ['train.attention="document"', 'tst.bag_boundaries="cross"'],
    "document-document": ['train.attention="document"', 'tst.bag_boundaries="document"'],
}
SHAPES = {
    "tiny": {"model.dim": 128, "model.n_layers": 4, "model.n_heads": 4, "model.n_kv_heads": 4,
             "model.max_seq_len": 128, "train.seq_len": 128, "train.batch_size": 16},
    "d384": {"model.dim": 384, "model.n_layers": 6, "model.n_heads": 6, "model.n_kv_heads": 6,
             "model.max_seq_len": 256, "train.seq_len": 256, "train.batch_size": 8},
}


def train(run: Path, sets: list[str]) -> None:
    if (run / "done.json").exists():
        return
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "tstcli", "train", str(BASE), "--run-dir", str(run),
                        *[x for s in sets for x in ("--set", s)], "--json"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit(f"{run.name} failed:\n{r.stderr[-2000:]}")
    (run / "done.json").write_text(r.stdout)
    print(f"{run.name}: {json.loads(r.stdout)['final_val_loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)


def scored_both_ways(run: Path) -> dict:
    """The run's final checkpoint on its held-out rows, with the causal and with the document mask."""
    import torch

    from tstcli.data.opener import open_prepared
    from tstcli.objective import Documents, next_token_loss
    from tstcli.run import rundir
    from tstcli.run.load import load_model

    lm = load_model(run)
    data = open_prepared(rundir.run_data_dir(run)[0])
    rows = torch.from_numpy(data.heldout_batch(lm.recipe))
    eot = data.manifest["tokenizer"]["eot_id"]
    out = {}
    for attention in ("causal", "document"):
        h = next_token_loss(lm.model, rows, 16, documents=Documents(eot, attention, "cross"))
        out[attention] = h.val_loss
    return out


def step_times(steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import small_recipe

    from tstcli.prep.prepare import prepare
    from tstcli.train.session import local_trainer

    torch.set_num_threads(2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        common = {"data.sources": [str(CORPUS)], "data.vocab_size": 4096, "tst.bag_size": 1, "tst.ratio": 0.0,
                  "train.steps": 10 ** 6, "train.warmup_steps": 10, "train.compile": True}
        prepare(small_recipe(data, **common).data, data, log=lambda *_: None)
        for shape, sets in SHAPES.items():
            trainers = {a: local_trainer(small_recipe(data, **common, **sets, **{"train.attention": a}),
                                         Path(tmp) / f"{shape}-{a}", hooks=[]) for a in ("causal", "document")}
            times: dict = {a: [] for a in trainers}
            for step in range(1, steps + 4):
                for a, t in trainers.items():
                    t0 = time.perf_counter()
                    float(t.train_step(step).loss)
                    if step > 3:  # compile and first allocations
                        times[a].append(time.perf_counter() - t0)
            med = {a: statistics.median(v) for a, v in times.items()}
            out[shape] = {"step_s": med, "document_over_causal": med["document"] / med["causal"]}
            print(f"{shape}: causal {med['causal'] * 1e3:.1f} ms, document {med['document'] * 1e3:.1f} ms "
                  f"({med['document'] / med['causal']:.3f}x)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--timing-steps", type=int, default=15)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "documents")
    args = ap.parse_args()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    summary: dict = {"corpus": str(CORPUS), "steps": args.steps, "base": str(BASE.relative_to(ROOT))}
    earlier = args.out / "summary.json"
    if args.skip_timing and earlier.exists():  # keep the timings an earlier invocation measured
        summary["step_time"] = json.loads(earlier.read_text()).get("step_time")
    if not args.skip_timing:
        summary["step_time"] = step_times(args.timing_steps)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    common = [f'data.sources=["{CORPUS}"]', f'data.dir="{args.out / "data"}"', f"train.steps={args.steps}",
              f"train.warmup_steps={max(1, args.steps // 20)}", f"eval.every={max(1, args.steps // 10)}",
              f"checkpoint.every={args.steps}", 'train.dtype="fp32"']
    summary["overrides"], summary["runs"] = common, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, sets in CONFIGS.items():
            run = runs / f"{name}-seed{seed}"
            train(run, common + sets + [f"run.seed={seed}"])
            summary["runs"][run.name] = {"config": name, "seed": seed, **scored_both_ways(run)}
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
