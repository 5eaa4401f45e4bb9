"""The plan `tst train --dry-run` prints: sizes, FLOPs, steps and tokens per phase, coverage, memory."""
from __future__ import annotations

import torch

from tstcli.data import packing
from tstcli.model import Llama
from tstcli.recipe import Recipe

GiB = 2 ** 30


def build_plan(r: Recipe, vocab_size: int, manifest: dict | None) -> dict:
    with torch.device("meta"):  # no memory, no time: works for any size
        model = Llama(r.model, vocab_size)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    L, B, mb = r.train.seq_len, r.train.batch_size, r.train.micro_batch
    fpp = model.flops_per_position(L)
    widths = packing.row_widths(r)
    steps = {1: r.phase1_steps, 2: r.train.steps - r.phase1_steps}
    # Memory: fp32 weights + grads + two AdamW moments = 16 B/param; activations per micro-batch ~34·mb·L·d bytes
    # per layer in bf16 (Korthikanti et al., no recomputation) plus logits (bf16 + fp32 copy + fp32 grad) and the
    # phase-1 gathered bag embeddings (fp32, s per position).
    act_bytes = 2 if r.train.dtype == "bf16" else 4
    layers = 17 * act_bytes * mb * L * r.model.dim * r.model.n_layers
    logits = mb * L * vocab_size * (act_bytes + 8)
    bags = mb * L * r.tst.bag_size * r.model.dim * 4
    plan = {
        "parameters": params,
        "parameters_non_embedding": params - embedding,
        "vocab_size": vocab_size,
        "flops_per_position": fpp,
        "flops_per_step": fpp * B * L,
        "flops_total": fpp * B * L * r.train.steps,
        "global_batch_rows": B, "micro_batch_rows": mb, "seq_len": L,
        "phases": {str(p): {"steps": steps[p], "row_tokens": widths[p], "tokens": steps[p] * B * widths[p],
                            "positions": steps[p] * B * L} for p in (1, 2)},
        "memory_estimate_gib": round((16 * params + layers + logits + bags) / GiB, 3),
        "coverage": None,
    }
    if manifest is not None:
        info, _ = packing.plan(r, manifest)
        plan["coverage"] = info
    return plan


def plan_lines(r: Recipe, p: dict) -> list[str]:
    lines = [
        f"model: {p['parameters']:,} parameters ({p['parameters_non_embedding']:,} non-embedding), "
        f"vocab {p['vocab_size']:,}, {r.model.n_layers} layers x {r.model.dim} dim",
        f"FLOPs: {p['flops_per_position']:,} per position (6N + 12·layers·dim·L), {p['flops_per_step']:.3e} per step, "
        f"{p['flops_total']:.3e} in all",
        f"batch: {p['global_batch_rows']} rows x {p['seq_len']} positions per step "
        f"(micro-batch {p['micro_batch_rows']})",
    ]
    for ph in ("1", "2"):
        x = p["phases"][ph]
        name = f"superposition, s={r.tst.bag_size}, mode={r.tst.mode}" if ph == "1" else "next-token recovery"
        lines.append(f"phase {ph} ({name}): {x['steps']} steps, rows of {x['row_tokens']} tokens, "
                     f"{x['tokens']:,} raw tokens, {x['positions']:,} positions")
    if p["coverage"] is None:
        lines.append("coverage: unknown until the data is prepared (`tst prepare RECIPE`)")
    else:
        lines += ["coverage: " + x for x in packing.coverage_lines(p["coverage"])]
    lines.append(f"memory estimate: {p['memory_estimate_gib']:.2f} GiB per device (weights, grads, AdamW, "
                 "activations of one micro-batch)")
    return lines
