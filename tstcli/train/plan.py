"""The plan `tst train --dry-run` prints: sizes, FLOPs, steps and tokens per phase, coverage, memory."""
from __future__ import annotations

import torch

from tstcli.data import packing
from tstcli.model import Llama
from tstcli.recipe import Recipe

GiB = 2 ** 30


def memory_per_device(r: Recipe, params: int, block_params: int, vocab_size: int, world_size: int) -> dict:
    """Estimated peak bytes per device in training, by part (an estimate: allocator slack and temporaries aside).

    State: fp32 weights + grads + two AdamW moments = 16 B/param, all of it on every device under DDP, 1/N of it
    under FSDP2 plus the parameters of the block being computed and the next one (gathered in the compute dtype).
    Activations of one micro-batch (Korthikanti et al.): ~34·mb·L·dim bytes per block in bf16 without
    recomputation, 2·mb·L·dim (the block input) for a recomputed block; plus the logits (compute dtype, an fp32
    copy and its gradient) and, in phase 1, the gathered bag embeddings (fp32, s per position).
    """
    L, d, mb = r.train.seq_len, r.model.dim, r.train.micro_batch_for(world_size)
    act = 2 if r.train.dtype == "bf16" else 4
    sharded = world_size > 1 and r.distributed.strategy == "fsdp"
    state = 16 * params / world_size if sharded else 16 * params
    gathered = 2 * block_params * act if sharded else 0
    full_block = 17 * act * mb * L * d
    every = {"none": 0, "selective": 2, "full": 1}[r.distributed.activation_checkpointing]
    recomputed = len(range(0, r.model.n_layers, every)) if every else 0
    blocks = (r.model.n_layers - recomputed) * full_block + recomputed * act * mb * L * d + (full_block if recomputed
                                                                                              else 0)
    logits = mb * L * vocab_size * (act + 8)
    bags = mb * L * r.tst.bag_size * d * 4
    parts = {"state": state, "gathered_params": gathered, "activations": blocks, "logits": logits, "bags": bags}
    return {k: round(v / GiB, 3) for k, v in parts.items()} | {"total": round(sum(parts.values()) / GiB, 3)}


def build_plan(r: Recipe, vocab_size: int, manifest: dict | None, nprocs: list[int] | None = None) -> dict:
    with torch.device("meta"):  # no memory, no time: works for any size
        model = Llama(r.model, vocab_size)
    params = sum(p.numel() for p in model.parameters())
    active = model.active_params()
    embedding = model.get_input_embeddings().weight.numel()
    block_params = sum(p.numel() for p in model.layers[0].parameters())
    L, B = r.train.seq_len, r.train.batch_size
    fpp = model.flops_per_position(L)
    widths = packing.row_widths(r)
    steps = {1: r.phase1_steps, 2: r.train.steps - r.phase1_steps}
    devices = {}
    for n in nprocs or [1]:
        mb = r.train.micro_batch_for(n)
        fits = mb >= 1 and B % (n * mb) == 0
        devices[str(n)] = {
            "strategy": "single process" if n == 1 else r.distributed.strategy,
            "micro_batch_rows": mb, "rows_per_device": B // n,
            "accumulation_steps": B // (n * mb) if fits else None,
            "batch_splits": fits,
            "memory_gib": memory_per_device(r, params, block_params, vocab_size, n),
        }
    plan = {
        "parameters": params,
        "parameters_non_embedding": params - embedding,
        "parameters_active": active,
        "vocab_size": vocab_size,
        "flops_per_position": fpp,
        "flops_per_step": fpp * B * L,
        "flops_total": fpp * B * L * r.train.steps,
        "global_batch_rows": B, "seq_len": L, "global_batch_positions": B * L,
        "phases": {str(p): {"steps": steps[p], "row_tokens": widths[p], "tokens": steps[p] * B * widths[p],
                            "positions": steps[p] * B * L} for p in (1, 2)},
        "devices": devices,
        "activation_checkpointing": r.distributed.activation_checkpointing,
        "coverage": None,
    }
    if manifest is not None:
        info, _ = packing.plan(r, manifest)
        plan["coverage"] = info
    return plan


def plan_lines(r: Recipe, p: dict) -> list[str]:
    lines = [
        f"model: {p['parameters']:,} parameters ({p['parameters_non_embedding']:,} without the input embedding), "
        f"vocab {p['vocab_size']:,}, {r.model.n_layers} layers x {r.model.dim} dim"
        + (f"; mixture of experts: {r.model.moe_experts} experts, top-{r.model.moe_top_k}, "
           f"{p['parameters_active']:,} active parameters per position" if r.model.moe_experts else ""),
        f"FLOPs: {p['flops_per_position']:,} per position (6N + 12·layers·heads·head_dim·L, N = active matmul "
        "parameters), "
        f"{p['flops_per_step']:.3e} per step, {p['flops_total']:.3e} in all",
        f"global batch: {p['global_batch_rows']} rows x {p['seq_len']} positions = "
        f"{p['global_batch_positions']:,} positions per step",
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
    for n, d in p["devices"].items():
        if not d["batch_splits"]:
            lines.append(f"{n} processes: train.batch_size {p['global_batch_rows']} does not split into {n} ranks x "
                         f"micro-batches of {d['micro_batch_rows']}: this world size would be refused")
            continue
        m = d["memory_gib"]
        lines.append(f"{n} process{'es' if n != '1' else ''} ({d['strategy']}, activation checkpointing "
                     f"{p['activation_checkpointing']}): {d['rows_per_device']} rows per device in "
                     f"{d['accumulation_steps']} micro-batches of {d['micro_batch_rows']}; memory about "
                     f"{m['total']:.1f} GiB per device (state {m['state']:.1f}, activations {m['activations']:.1f}, "
                     f"logits {m['logits']:.1f}, bags {m['bags']:.1f}, gathered parameters "
                     f"{m['gathered_params']:.1f})")
    return lines
