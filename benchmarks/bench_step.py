"""Phase-1 vs phase-2 step time at equal latent positions, raw tokens/s per phase, and the hooks' overhead.

Runs the real training loop body for phase-1 and phase-2 steps of the same run — the hooks' `before_step`, the
training step (`Trainer.train_step`: data rows, bags, model, loss, backward, clip, AdamW), the metrics row through
every hook (metrics log included), the hooks' `after_step` — alternating blocks of steps so that machine noise hits
both phases alike. It reports median step times, their ratio, raw tokens/s, and the share of each loop iteration
spent in the hooks on steps where no side job is due (validation and checkpoints are pushed past the end).
Targets: phase-1/phase-2 step time <= 1.04, phase-1 raw tokens/s >= 0.96·s × phase 2's (issue #3, CPU);
hook overhead <= 1% of a step (issue #13).

    python benchmarks/bench_step.py                       # tiny + a larger model, compile off and on
    python benchmarks/bench_step.py --models tiny --compile off --rounds 3
    python benchmarks/bench_step.py --models moe8,dense-active --compile on   # MoE vs dense, equal active params
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tstcli import recipe as recipes  # noqa: E402
from tstcli.data.opener import open_data  # noqa: E402
from tstcli.prep.prepare import prepare  # noqa: E402
from tstcli.train import hardware  # noqa: E402
from tstcli.train.session import local_trainer  # noqa: E402

MODELS = {
    # the default recipe's shape
    "tiny": [],
    # a larger CPU model: 8 layers x 384, L=256 (~17M params with V=4096)
    "d384": ["model.dim=384", "model.n_layers=8", "model.n_heads=6", "model.n_kv_heads=6", "train.seq_len=256"],
    # recipes/moe-tiny.toml's shape: 8 experts of 128, top-2, QK-norm, untied...
    "moe8": ["model.moe_experts=8", "model.moe_top_k=2", "model.moe_ffn_dim=128", "model.qk_norm=true",
             "model.head_dim=32", "model.tie_embeddings=false"],
    # ...and the dense model with its active parameters: one SwiGLU of 2 x 128
    "dense-active": ["model.ffn_dim=256", "model.qk_norm=true", "model.head_dim=32", "model.tie_embeddings=false"],
}


class Subject:
    """One model's trainer, warmed up (graphs compiled), and its step timings per phase."""

    def __init__(self, model: str, compile_: bool, data_dir: Path, run_dir: Path, extra: list[str] = ()):
        sets = MODELS[model] + list(extra) + [f"train.compile={'true' if compile_ else 'false'}", "train.steps=1000",
                                "tst.ratio=0.5", f'data.dir="{data_dir}"', "eval.every=1000000",
                                "checkpoint.every=1000000"]
        self.model, self.compile = model, compile_
        self.r = r = recipes.load(ROOT / "recipes" / "tiny.toml", sets)
        data, _ = open_data(r, data_dir)
        self.t = local_trainer(r, run_dir, data)  # the default hooks, console aside
        self.t.hooks.on_start(self.t)  # opens the metrics log, scores step 0
        n1 = r.plan.phase1_steps
        self.steps = {1: iter(range(1, n1 + 1)), 2: iter(range(n1 + 1, r.train.steps + 1))}
        t0 = time.perf_counter()
        for phase in (1, 2):  # warm-up: compile both graphs, fill caches
            for _ in range(2):
                self.step(next(self.steps[phase]))
        self.warm = time.perf_counter() - t0
        self.times, self.data_s, self.hook_s = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}

    def step(self, step: int):
        """The loop body of `Trainer.run`, timed in parts: (seconds of the step, seconds in hooks, result)."""
        t = self.t
        a = time.perf_counter()
        t.hooks.before_step(t, step)
        b = time.perf_counter()
        out = t.train_step(step)
        c = time.perf_counter()
        t.record(step, out, c - b)
        t.flush()  # a CPU step: reading its scalars at once costs nothing (on a GPU they wait for train.log_every)
        t.state.step = step
        t.hooks.after_step(t, step)
        return c - b, (b - a) + (time.perf_counter() - c), out

    def run_block(self, phase: int, block: int) -> None:
        for _ in range(block):
            dt, hooks, out = self.step(next(self.steps[phase]))
            self.times[phase].append(dt)
            self.hook_s[phase].append(hooks)
            self.data_s[phase].append(out.data_s)

    def close(self) -> None:
        self.t.hooks.on_close(self.t)

    def result(self) -> dict:
        t, r = self.t, self.r
        med = {p: statistics.median(self.times[p]) for p in (1, 2)}
        B, L, s = r.train.batch_size, r.train.seq_len, r.tst.bag_size
        raw = {p: B * t.plan.row_widths[p] / med[p] for p in (1, 2)}
        device_name, peak = hardware.peak_flops(t.device, t.amp is not None)
        return {
            "model": self.model, "compile": self.compile, "params": sum(p.numel() for p in t.model.parameters()),
            "active_params": t.model.active_params(),
            "s": s, "batch": B, "seq_len": L, "threads": torch.get_num_threads(), "warmup_s": round(self.warm, 1),
            "phase1_step_ms": round(1000 * med[1], 2), "phase2_step_ms": round(1000 * med[2], 2),
            "step_ratio": round(med[1] / med[2], 3),
            "phase1_raw_tokens_per_s": round(raw[1]), "phase2_raw_tokens_per_s": round(raw[2]),
            "raw_tokens_ratio_over_s": round(raw[1] / raw[2] / s, 3),
            "positions_per_s": {p: round(B * L / med[p]) for p in (1, 2)},
            "data_share": {p: round(statistics.median(self.data_s[p]) / med[p], 4) for p in (1, 2)},
            "device": device_name, "peak_flops": peak,
            "mfu": {p: (round(t.flops_per_position * B * L / med[p] / peak, 4) if peak else None) for p in (1, 2)},
            "hook_overhead": {p: round(statistics.median(self.hook_s[p]) / med[p], 5) for p in (1, 2)},
            "samples": {p: len(self.times[p]) for p in (1, 2)},
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,d384")
    ap.add_argument("--compile", default="off,on")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=4, help="consecutive steps of one phase per round")
    ap.add_argument("--json", type=Path, help="also write results here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every model, e.g. train.dtype=fp32 (CPUs without bf16 matmuls)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        prepare(recipes.load(ROOT / "recipes" / "tiny.toml").data, data_dir, log=lambda *_: None)
        for c in args.compile.split(","):
            # Every model of one compile setting is measured in the same rounds, blocks interleaved, so that
            # machine noise hits them alike and their ratio holds.
            subjects = [Subject(m, c == "on", data_dir, Path(tmp) / f"run-{m}-{c}", args.set)
                        for m in args.models.split(",")]
            for _ in range(args.rounds):
                for subject in subjects:
                    for phase in (1, 2):
                        subject.run_block(phase, args.block)
            for subject in subjects:
                subject.close()
                results.append(subject.result())
                print(json.dumps(results[-1]), flush=True)
    print("\n| model | params | compile | phase-1 step | phase-2 step | ratio | raw tok/s p1 | raw tok/s p2 | "
          "(p1/p2)/s | hooks p1 / p2 |\n|---|---|---|---|---|---|---|---|---|---|")
    for x in results:
        print(f"| {x['model']} | {x['params'] / 1e6:.1f}M | {'on' if x['compile'] else 'off'} | "
              f"{x['phase1_step_ms']} ms | {x['phase2_step_ms']} ms | {x['step_ratio']} | "
              f"{x['phase1_raw_tokens_per_s']:,} | {x['phase2_raw_tokens_per_s']:,} | {x['raw_tokens_ratio_over_s']} | "
              f"{100 * x['hook_overhead'][1]:.2f}% / {100 * x['hook_overhead'][2]:.2f}% |")
    by_name = {(x["model"], x["compile"]): x for x in results}
    for c in {x["compile"] for x in results}:
        if ("moe8", c) in by_name and ("dense-active", c) in by_name:
            m, d = by_name[("moe8", c)], by_name[("dense-active", c)]
            print(f"moe8 / dense-active step time (compile {'on' if c else 'off'}): phase 1 "
                  f"{m['phase1_step_ms'] / d['phase1_step_ms']:.2f}x, phase 2 "
                  f"{m['phase2_step_ms'] / d['phase2_step_ms']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
