"""One GPU, the paper's 270M and 600M shapes (recipes/270m.toml, recipes/600m.toml) at V = 128,256: positions/s,
MFU, peak memory, phase-1 (the recipes' s = 6) / phase-2 step-time and memory ratios, bf16 vs float8, the chunked
loss vs full logits (issue #14), and the time a checkpoint blocks the training loop, sync vs async (issue #19).

Each configuration (shape x precision) runs in its own child process: its memory, CUDA caches and compile state
start clean, and a failure (out of memory, a float8 compile error) costs only its row. A child builds the objective
as `tst train` does (`Objective` in an `Engine`: bf16 autocast, torch.compile, the chunked head loss) over random
token rows (no tokenizer, no prepared data), warms both phases up (graphs compiled), then times alternating blocks
of phase-1 and phase-2 steps, so that machine noise hits both alike. A step: `--accum` micro-batches of `--rows`
rows of seq_len latent positions (forward, backward), clipping, AdamW; synchronised around each timed step. Peak
memory: the CUDA allocator's peak over a phase's timed steps. MFU: `Llama.flops_per_position` (6N + attention)
x positions/s / the device's dense bf16 peak (`tstcli.train.hardware`), float8 runs included, so that they compare.
Configurations run most important first and none starts after `--budget-s`: the command fits in 10 minutes.

Targets (one H100/H200): MFU >= 0.50 at 600M in bf16; phase-1/phase-2 step time <= 1.02; float8 >= 1.2x bf16
positions/s at 600M where torchao supports it.

    python benchmarks/bench_gpu.py --out benchmarks/results/bench_gpu.json      # one H100/H200, < 10 minutes
    python benchmarks/bench_gpu.py --device cpu --quick                         # smoke test of every code path
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tstcli import recipe as recipes  # noqa: E402
from tstcli.errors import UsageError  # noqa: E402
from tstcli.model import Llama  # noqa: E402
from tstcli.objective import Objective  # noqa: E402
from tstcli.parallel.engine import Engine  # noqa: E402
from tstcli.parallel.world import World  # noqa: E402
from tstcli.run import checkpoint  # noqa: E402
from tstcli.run.saver import Saver  # noqa: E402
from tstcli.train import float8  # noqa: E402
from tstcli.train.hardware import peak_flops  # noqa: E402
from tstcli.train.optim import apply_update, make_optimizer  # noqa: E402
from tstcli.tst import loss_specs  # noqa: E402

GiB = 2 ** 30
FULL = "bf16 full logits"  # (shape, precision, time the checkpoint) below
# Most important first: if the time budget runs out, the last rows are the ones dropped.
# "bf16 full logits": train.loss_chunk_size = 0, the reference path the chunked loss replaces (issue #14).
# The checkpoint is timed at 270M (~3 GB with AdamW state): the 600M one would spend a minute of the budget on disk.
CONFIGS = [("600m", "bf16", False), ("270m", "bf16", True), ("600m", "float8", False), ("600m", FULL, False),
           ("270m", FULL, False)]
PRECISIONS = {"bf16": "bf16", "float8": "float8", "full": FULL}  # --configs names -> the rows' precision
# --quick: the recipes with tiny dimensions (multiples of 16, so float8 would take every block linear).
QUICK = {"270m": ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128"],
         "600m": ["model.dim=96", "model.n_layers=3", "model.n_heads=6", "model.n_kv_heads=2", "model.ffn_dim=256"]}


def _recipe(shape: str, a, precision: str = "bf16") -> recipes.Recipe:
    chunk = 0 if precision == FULL else a.chunk
    sets = [f"train.batch_size={a.rows * a.accum}", f"train.micro_batch_size={a.rows}", "tst.ratio=0.5",
            f"train.compile={'true' if a.compile == 'on' else 'false'}", 'train.dtype="bf16"',
            f"train.loss_chunk_size={chunk}", *([f"tst.bag_size={a.bag_size}"] if a.bag_size else [])]
    if a.quick:
        sets += QUICK[shape] + [f"train.seq_len={a.seq_len or 64}", f"model.max_seq_len={a.seq_len or 64}"]
    elif a.seq_len:
        sets += [f"train.seq_len={a.seq_len}", f"model.max_seq_len={max(a.seq_len, 2048)}"]
    return recipes.load(ROOT / "recipes" / f"{shape}.toml", sets)


def _sync(device: torch.device, reset_peak: bool = False) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)


def _step_fn(engine: Engine, model, optimizer, rows: torch.Tensor, phase: int):
    """One optimizer step as the trainer takes it: the micro-batches' forward and backward, clipping, AdamW."""
    step_fn, accum = engine.step_fn(phase), len(rows)

    def step():
        for micro in rows:
            loss, _ = step_fn(micro)
            (loss / accum).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        apply_update(optimizer, torch.isfinite(norm))  # as the trainer: fused AdamW, the skip decided on the device
    return step


def _timed(step, device: torch.device, n: int) -> list[float]:
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def checkpoint_blocking(model, optimizer, tmpdir: Path, recipe_toml: str = "") -> dict:
    """Seconds the training loop stands still for one checkpoint of `model` and `optimizer` under `tmpdir`: written
    synchronously, and in the background (`checkpoint.async`: the loop waits only for the device-to-host copy into
    pinned buffers, which the first save allocates and later ones reuse, so the second save is the one timed)."""
    device = next(model.parameters()).device
    times = {}
    for background in (False, True):
        saver = Saver(Path(tmpdir) / ("async" if background else "sync"), World(), keep=1, background=background,
                      pinned=device.type == "cuda")
        rows = []
        for step in ((1, 2) if background else (1,)):
            _sync(device)
            rows += saver.save(step, model, optimizer.parts, {"step": step}, recipe_toml)  # as the trainer
            rows += saver.wait()
        saver.close()
        times["async" if background else "sync"] = rows[-1]
    path = checkpoint.latest(Path(tmpdir) / "sync")
    size = sum(f.stat().st_size for f in path.iterdir())
    return {"sync_s": round(times["sync"]["blocking_s"], 3), "async_s": round(times["async"]["blocking_s"], 3),
            "async_total_s": round(times["async"]["total_s"], 3), "bytes": size}


def _build(a, shape: str, precision: str):
    """(recipe, model, optimizer, {phase: step function}, {phase: row width}, float8 linears), as `tst train`
    builds them, over random token rows made once per phase."""
    device = torch.device(a.device)
    r = _recipe(shape, a, precision)
    model = Llama(r.model, a.vocab)
    model.init_weights(torch.Generator().manual_seed(0))
    model.to(device)
    converted = float8.convert(model) if precision == "float8" else []  # before compile, as the trainer does
    losses = loss_specs(r.plan, r.tst, r.train.loss_chunk_size)
    engine = Engine(Objective(model, r.plan.specs, losses, torch.bfloat16), r.distributed, World(),
                    torch.bfloat16, r.train.compile)
    optimizer = make_optimizer(model, r.train)
    gen, widths = torch.Generator(device=device).manual_seed(0), r.plan.row_widths
    rows = {p: torch.randint(0, a.vocab, (a.accum, a.rows, widths[p]), generator=gen, device=device) for p in (1, 2)}
    return r, model, optimizer, {p: _step_fn(engine, model, optimizer, rows[p], p) for p in (1, 2)}, widths, converted


def child(cfg: dict) -> dict:
    """One configuration: build, warm both phases up (graphs compiled), time alternating blocks of each phase."""
    a, shape, precision = argparse.Namespace(**cfg["args"]), cfg["shape"], cfg["precision"]
    device = torch.device(a.device)
    r, model, optimizer, steps, widths, converted = _build(a, shape, precision)
    t0 = time.perf_counter()
    for p in (1, 2):
        _timed(steps[p], device, a.warmup)
    warm_s, times, peaks = time.perf_counter() - t0, {1: [], 2: []}, {1: [], 2: []}
    for _ in range(a.rounds):
        for p in (1, 2):
            _sync(device, reset_peak=True)
            times[p] += _timed(steps[p], device, a.block)
            # the CUDA allocator's peak; a CPU has no allocator statistics (bench_loss.py reads the RSS instead)
            peaks[p].append(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
    L, fpp, (name, peak) = r.train.seq_len, model.flops_per_position(r.train.seq_len), peak_flops(device, True)
    ph = {}
    for p in (1, 2):
        med, top = statistics.median(times[p]), None if peaks[p][0] is None else max(peaks[p])
        pos_s = a.accum * a.rows * L / med
        ph[p] = {"step_ms": round(1000 * med, 2), "positions_per_s": round(pos_s),
                 "raw_tokens_per_s": round(a.accum * a.rows * widths[p] / med),
                 "mfu": round(fpp * pos_s / peak, 4) if peak else None,
                 "peak_gib": None if top is None else round(top / GiB, 3), "steps": len(times[p])}
    out = {"shape": shape, "precision": precision, "params": sum(p.numel() for p in model.parameters()),
           "dim": r.model.dim, "layers": r.model.n_layers, "vocab": a.vocab, "seq_len": L, "rows": a.rows,
           "accum": a.accum, "bag_size": r.tst.bag_size, "compile": r.train.compile, "float8_linears": len(converted),
           "device": name, "peak_flops": peak, "warmup_s": round(warm_s, 1), "phases": ph,
           "step_ratio": round(ph[1]["step_ms"] / ph[2]["step_ms"], 4),
           "memory_ratio": round(ph[1]["peak_gib"] / ph[2]["peak_gib"], 4) if ph[1]["peak_gib"] else None}
    if cfg["checkpoint"]:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-ckpt-") as tmp:
            out["checkpoint"] = checkpoint_blocking(model, optimizer, Path(tmp), recipes.to_toml(r))
    return out


def run_child(cfg: dict, timeout: float) -> dict:
    where = {"shape": cfg["shape"], "precision": cfg["precision"]}
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return {**where, "error": f"stopped after {timeout:.0f} s, the rest of the --budget-s time budget"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {**where, "error": lines[-1], "stderr_tail": done.stderr[-3000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(results: list[dict]) -> dict:
    """The issue's targets, from the rows that ran."""
    got = {(x["shape"], x["precision"]): x for x in results if "phases" in x}
    out = {"phase_step_ratio<=1.02": {f"{s} {p}": x["step_ratio"] <= 1.02 for (s, p), x in got.items() if p != FULL}}
    if ("600m", "bf16") in got:
        mfu = [got["600m", "bf16"]["phases"][p]["mfu"] for p in ("1", "2")]
        out["mfu_600m_bf16>=0.50"] = None if None in mfu else min(mfu) >= 0.50
    if ("600m", "bf16") in got and ("600m", "float8") in got:
        b, f = got["600m", "bf16"]["phases"], got["600m", "float8"]["phases"]
        speed = {p: round(f[p]["positions_per_s"] / b[p]["positions_per_s"], 3) for p in ("1", "2")}
        out["float8_over_bf16_600m"] = speed
        out["float8>=1.2x_bf16_600m"] = min(speed.values()) >= 1.2
    for shape in ("270m", "600m"):  # issue #14: the chunked loss against full logits
        if (shape, "bf16") in got and (shape, FULL) in got:
            c, f = got[shape, "bf16"]["phases"], got[shape, FULL]["phases"]
            out[f"chunked_over_full_{shape}"] = {
                p: {"speed": _ratio(c[p]["positions_per_s"], f[p]["positions_per_s"]),
                    "peak_memory": _ratio(c[p]["peak_gib"], f[p]["peak_gib"])} for p in ("1", "2")}
    out["phase_memory_ratio<=1.05"] = {f"{s} {p}": x["memory_ratio"] <= 1.05 for (s, p), x in got.items()
                                       if x["memory_ratio"] is not None and p != FULL}
    return out


def _ratio(a, b):
    return None if a is None or b is None else round(a / b, 3)


def _fmt(v, spec: str = "", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    s = next((x["bag_size"] for x in results if "bag_size" in x), "?")
    lines = [f"| shape | precision | params | phase-1 step (s = {s}) | phase-2 step | p1/p2 time | positions/s p1 | "
             "positions/s p2 | MFU p1 | MFU p2 | peak GiB p1 | peak GiB p2 | p1/p2 memory |", "|" + "---|" * 13]
    for x in results:
        if "phases" not in x:
            why = x.get("skipped") or f"failed: {x['error']}"
            lines.append(f"| {x['shape']} | {x['precision']} | {why} |" + " |" * 10)
            continue
        p1, p2 = x["phases"]["1"], x["phases"]["2"]
        lines.append(f"| {x['shape']} | {x['precision']} | {x['params'] / 1e6:.0f}M | {p1['step_ms']} ms | "
                     f"{p2['step_ms']} ms | {x['step_ratio']:.3f} | {p1['positions_per_s']:,} | "
                     f"{p2['positions_per_s']:,} | {_fmt(p1['mfu'], '.3f')} | {_fmt(p2['mfu'], '.3f')} | "
                     f"{_fmt(p1['peak_gib'], '.2f')} | {_fmt(p2['peak_gib'], '.2f')} | "
                     f"{_fmt(x['memory_ratio'], '.3f')} |")
    return "\n".join(lines)


def no_device(a) -> str | None:
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        return (f"bench_gpu: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); run it "
                "on an H100/H200, or `--device cpu --quick` for a smoke test")
    return None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes, V = 4,096, L = 64: a smoke test")
    p.add_argument("--vocab", type=int, help="default 128,256 (4,096 with --quick)")
    p.add_argument("--seq-len", type=int, default=0, help="default: the recipe's (2,048; 64 with --quick)")
    p.add_argument("--rows", type=int, help="rows per micro-batch (default: the recipes' 8; 2 with --quick)")
    p.add_argument("--accum", type=int, help="micro-batches per optimizer step (default 2; 1 with --quick)")
    p.add_argument("--bag-size", type=int, default=0, help="tst.bag_size (default: the recipes', 6)")
    p.add_argument("--chunk", type=int, default=recipes.TrainConfig.loss_chunk_size, help="train.loss_chunk_size")
    p.add_argument("--compile", choices=["on", "off"], default="on")
    p.add_argument("--warmup", type=int, help="untimed steps per phase, the first compiles (default 2; 1 --quick)")
    p.add_argument("--rounds", type=int, help="alternating rounds of timed blocks (default 3; 1 with --quick)")
    p.add_argument("--block", type=int, default=2, help="timed steps per phase and round")
    p.add_argument("--configs", help="comma-separated SHAPE:PRECISION to run, e.g. '600m:bf16,270m:float8' "
                   "(precisions: bf16, float8, full; default: all, most important first)")
    p.add_argument("--budget-s", type=float, default=480, help="start no configuration after this many seconds")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/bench_gpu.json; with --quick "
                   "a file in the temporary directory, so that a smoke test never replaces real results)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    q = a.quick
    a.out = a.out or (Path(tempfile.gettempdir()) / "bench_gpu_quick.json" if q
                      else ROOT / "benchmarks" / "results" / "bench_gpu.json")
    a.vocab, a.rows = a.vocab or (4096 if q else 128_256), a.rows or (2 if q else 8)
    a.accum, a.warmup, a.rounds = a.accum or (1 if q else 2), a.warmup or (1 if q else 2), a.rounds or (1 if q else 3)
    return a


def chosen(configs: str | None) -> list[tuple[str, str, bool]]:
    """The configurations `--configs` names, in its order (the checkpoint timed with the first); all by default."""
    if not configs:
        return CONFIGS
    out = []
    for i, item in enumerate(configs.split(",")):
        shape, _, prec = item.strip().partition(":")
        if shape not in QUICK or prec not in PRECISIONS:
            sys.exit(f"bench_gpu: --configs: {item!r} is not SHAPE:PRECISION (shapes {', '.join(QUICK)}; "
                     f"precisions {', '.join(PRECISIONS)})")
        out.append((shape, PRECISIONS[prec], i == 0))
    return out


def run_all(a: argparse.Namespace, args: dict) -> list[dict]:
    results, start = [], time.perf_counter()
    for shape, precision, ckpt in chosen(a.configs):
        where, left = {"shape": shape, "precision": precision}, a.budget_s - (time.perf_counter() - start)
        try:
            if precision == "float8":
                float8.check(torch.device(a.device))
        except UsageError as e:
            results.append({**where, "skipped": e.message})
        else:
            results.append(run_child({"args": args, **where, "checkpoint": ckpt}, timeout=left + 60) if left > 0
                           else {**where, "skipped": "time budget (--budget-s) spent"})  # may overrun by a minute
        x = results[-1]
        done = "phases" in x and (f"{x['phases']['2']['positions_per_s']:,} positions/s (phase 2), "
                                  f"warm-up {x['warmup_s']} s")
        print(f"{shape} {precision}: {x.get('error') or x.get('skipped') or done}", flush=True)
    return results


def main() -> None:
    a = parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    if (msg := no_device(a)) is not None:
        print(msg, file=sys.stderr)
        sys.exit(2)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "child"}
    results = run_all(a, args)
    targets = summary(results)
    print("\n" + table(results) + "\n")
    ckpt = next((x["checkpoint"] for x in results if "checkpoint" in x), None)
    if ckpt:
        print(f"checkpoint ({ckpt['bytes'] / GiB:.2f} GiB): the loop blocks {ckpt['sync_s']:.2f} s (sync), "
              f"{_fmt(ckpt['async_s'], '.2f', 'not measured yet')} (async)")
    print(("targets (not meaningful for --quick's tiny shapes): " if a.quick else "targets: ") + json.dumps(targets))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"command": " ".join(sys.argv), "torch": torch.__version__, "args": args,
                                 "results": results, "targets": targets}, indent=1) + "\n")
    print(f"wrote {a.out}")
    sys.exit(1 if any("error" in x for x in results) else 0)


if __name__ == "__main__":
    main()
