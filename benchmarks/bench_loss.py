"""Peak memory and time of a full training step (forward, backward, clip, AdamW) with the chunked head loss and with
the full logits, phase 1 (s = 6) and phase 2, compile off and on: issue #14's targets.

Each configuration runs in its own child process through the real training objective (`Objective` in an `Engine`,
as `tst train` builds it): warm-up steps first (graphs compiled), then glibc's free memory is trimmed, the kernel's
peak-RSS mark is reset (`echo 5 > /proc/self/clear_refs`) and the measured steps run. Peak memory is the process's
VmHWM over the measured steps: everything resident — weights, gradients, AdamW moments, activations, logits — the
honest CPU figure (torch has no CPU allocator statistics). Children run with MALLOC_MMAP_THRESHOLD_=131072, so
glibc maps every allocation above 128 KiB separately and returns it when freed: resident memory then tracks live
tensors instead of what the heap happened to keep from earlier phases of the step. Step time is the median of the
measured steps.

Targets (CPU, V = 128,256, d = 512, 4,096 positions per micro-batch):
  chunked phase-1 peak <= 1.05 x chunked phase-2 peak
  chunked phase-1 peak <= 0.5 x full-logits phase-1 peak
  chunked step time    <= 1.05 x full-logits step time

    python benchmarks/bench_loss.py                         # the issue's configuration (bf16 autocast)
    python benchmarks/bench_loss.py --dtype fp32            # what an AVX2-only CPU can run (see RESULTS.md)
    python benchmarks/bench_loss.py --compile off --steps 1 --positions 1024    # quicker
    python benchmarks/bench_loss.py --device cuda --dim 576 --layers 30 ...      # a GPU (peak: CUDA allocator)
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tstcli import recipe as recipes  # noqa: E402
from tstcli.model import Llama  # noqa: E402
from tstcli.objective import Objective  # noqa: E402
from tstcli.parallel.engine import Engine  # noqa: E402
from tstcli.parallel.world import World  # noqa: E402
from tstcli.train.optim import make_optimizer  # noqa: E402
from tstcli.tst import loss_specs  # noqa: E402

GiB = 2 ** 30


def _recipe(a, chunk: int, compile_: bool) -> recipes.Recipe:
    rows = a.positions // a.seq_len
    return recipes.load(ROOT / "recipes" / "tiny.toml", [
        f"model.dim={a.dim}", f"model.n_layers={a.layers}", f"model.n_heads={a.dim // 64}",
        f"model.n_kv_heads={a.dim // 64}", f"model.max_seq_len={a.seq_len}", "model.tie_embeddings=false",
        f"train.seq_len={a.seq_len}", f"train.batch_size={rows}", f'train.dtype="{a.dtype}"',
        f"train.compile={'true' if compile_ else 'false'}", f"train.loss_chunk_size={chunk}",
        f"tst.bag_size={a.bag_size}", "tst.ratio=0.5"])


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed warm-up memory back, so it does not count as this step's
    Path("/proc/self/clear_refs").write_text("5")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _vm("VmHWM")


def child(cfg: dict) -> dict:
    """One configuration: build the objective as training does, warm up, measure."""
    a = argparse.Namespace(**cfg["args"])
    device = torch.device(a.device)
    torch.manual_seed(0)
    r = _recipe(a, cfg["chunk"], cfg["compile"])
    amp = torch.bfloat16 if a.dtype == "bf16" else None
    model = Llama(r.model, a.vocab)
    model.init_weights(torch.Generator().manual_seed(0))
    model.to(device)
    losses = loss_specs(r.plan, r.tst, r.train.loss_chunk_size)
    engine = Engine(Objective(model, r.plan.specs, losses, amp), r.distributed, World(), amp, cfg["compile"])
    opt = make_optimizer(model, r.train)
    phase = cfg["phase"]
    width = r.plan.row_widths[phase]
    step_fn = engine.step_fn(phase)

    def step():
        rows = torch.randint(0, a.vocab, (r.train.batch_size, width), device=device)
        loss, _ = step_fn(rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    for _ in range(a.warmup):
        step()
    _reset_peak(device)
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"peak_gib": _peak(device) / GiB, "step_s": statistics.median(times), "times": times}


CONFIGS = [(phase, path) for phase in (1, 2) for path in ("chunked", "full")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=128_256)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--positions", type=int, default=4096, help="positions per micro-batch (rows x seq_len)")
    p.add_argument("--bag-size", type=int, default=6)
    p.add_argument("--chunk", type=int, default=recipes.TrainConfig.loss_chunk_size)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both")
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_loss.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    args = {k: v for k, v in vars(a).items() if k not in ("out", "child", "compile")}
    compiles = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    results = []
    for compile_ in compiles:
        for phase, path in CONFIGS:
            cfg = {"args": args, "phase": phase, "compile": compile_, "chunk": a.chunk if path == "chunked" else 0}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True,
                                 text=True, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                                 "MALLOC_MMAP_THRESHOLD_": "131072"})
            if out.returncode != 0:
                sys.exit(f"configuration {cfg} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append({"compile": compile_, "phase": phase, "path": path, **res})
            print(f"compile={'on ' if compile_ else 'off'} phase {phase} {path:8s} peak {res['peak_gib']:6.2f} GiB  "
                  f"step {res['step_s']:7.2f} s", flush=True)
    summary = {}
    for compile_ in compiles:
        got = {(x["phase"], x["path"]): x for x in results if x["compile"] == compile_}
        ratios = {
            "chunked_p1_over_chunked_p2_peak": got[1, "chunked"]["peak_gib"] / got[2, "chunked"]["peak_gib"],
            "chunked_p1_over_full_p1_peak": got[1, "chunked"]["peak_gib"] / got[1, "full"]["peak_gib"],
            "chunked_over_full_step_time_p1": got[1, "chunked"]["step_s"] / got[1, "full"]["step_s"],
            "chunked_over_full_step_time_p2": got[2, "chunked"]["step_s"] / got[2, "full"]["step_s"],
        }
        summary["compile_on" if compile_ else "compile_off"] = ratios
        print(f"compile={'on' if compile_ else 'off'}: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"command": " ".join(sys.argv), "args": args, "results": results,
                                 "ratios": summary, "torch": torch.__version__}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
