"""How long a checkpoint stops training: written synchronously vs in the background (`checkpoint.async`, issue #19).

Builds the model and AdamW state of a d768 x 8-layer transformer (about 60M parameters: weights and two moments in
fp32, a checkpoint of ~0.7 GB), then saves it through `tstcli.run.saver.Saver` the way the checkpoint hook does,
alternating synchronous and background saves so that machine noise hits both alike. `blocking_s` is the time the
caller stood still (a background save: waiting for nothing in flight, then the copy to host memory); `total_s` until
the checkpoint was complete (shards, sha256, state.json, fsync, rename). While a background write runs, the script
goes on with real training steps and reports their time against steps with no write in flight: the write's cost
to a CPU run, whose cores it shares.

    python benchmarks/bench_checkpoint.py                   # ~2 minutes on 2 cores
    python benchmarks/bench_checkpoint.py --layers 8 --dim 768 --repeats 3 --dir /path/on/the/real/disk
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tstcli import recipe as recipes  # noqa: E402
from tstcli.model import Llama  # noqa: E402
from tstcli.parallel.world import World  # noqa: E402
from tstcli.run import checkpoint  # noqa: E402
from tstcli.run.saver import Saver  # noqa: E402
from tstcli.train.optim import make_optimizer  # noqa: E402


def build(a):
    r = recipes.from_dict({"model": {"dim": a.dim, "n_layers": a.layers, "n_heads": a.dim // 64,
                                     "n_kv_heads": a.dim // 64, "max_seq_len": 128}}, "bench")
    model = Llama(r.model, a.vocab)
    model.init_weights(torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, r.train)
    ids = torch.randint(0, a.vocab, (4, 64), generator=torch.Generator().manual_seed(1))

    def step():  # a small real training step (forward, backward, AdamW), to time beside a background write
        model(ids).float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step()  # the moments exist from here: the checkpoint holds weights and optimizer state
    return model, optimizer, step


def steps_during(saver: Saver, step) -> list[float]:
    """Time training steps until the background write in flight is done."""
    times = []
    while saver.writing:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, optimizer, step = build(a)
    for _ in range(3):  # warm
        step()
    t = [time.perf_counter()]
    for _ in range(5):
        step()
        t.append(time.perf_counter())
    quiet = [b - x for x, b in zip(t, t[1:])]
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        savers = {mode: Saver(Path(tmp) / mode, World(), keep=1, background=mode == "async") for mode in ("sync", "async")}
        rows, during = {"sync": [], "async": []}, []
        n = 0
        for _ in range(a.repeats):
            for mode, saver in savers.items():
                n += 1
                rows[mode] += saver.save(n, model, optimizer.parts, {"step": n}, "")  # the parts, as the trainer
                during += steps_during(saver, step)
                rows[mode] += saver.wait()
        size = sum(f.stat().st_size for f in checkpoint.latest(Path(tmp) / "sync").iterdir())
        for saver in savers.values():
            saver.close()
    med = {m: {k: statistics.median(r[k] for r in rows[m]) for k in ("blocking_s", "total_s")} for m in rows}
    out = {"checkpoint_bytes": size, "params": sum(p.numel() for p in model.parameters()), "repeats": a.repeats,
           "sync": med["sync"], "async": med["async"],
           "blocking_ratio": med["async"]["blocking_s"] / med["sync"]["blocking_s"],
           "step_s_quiet": statistics.median(quiet), "step_s_during_write": statistics.median(during) if during else None,
           "steps_during_writes": len(during), "threads": torch.get_num_threads()}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"checkpoint {size / 1e6:.0f} MB ({out['params'] / 1e6:.1f}M parameters, weights + AdamW moments, fp32), "
          f"median of {a.repeats} saves each, {out['threads']} threads")
    print("| save | training stood still (blocking_s) | complete after (total_s) |")
    print("|---|---|---|")
    for m in ("sync", "async"):
        print(f"| {m} | {med[m]['blocking_s']:.3f} s | {med[m]['total_s']:.3f} s |")
    print(f"async / sync blocking: {out['blocking_ratio']:.3f} (target <= 0.2)")
    if during:
        print(f"training step: {out['step_s_quiet'] * 1e3:.0f} ms with no write in flight, "
              f"{out['step_s_during_write'] * 1e3:.0f} ms during a background write ({len(during)} steps)")


if __name__ == "__main__":
    main()
