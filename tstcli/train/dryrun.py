"""The dry run's plan (`tst train --dry-run`): sizes, FLOPs, steps and tokens per phase, coverage, memory per
device. Built on the meta device, so it takes seconds for any model size; `cli/report.py` turns it into text."""
from __future__ import annotations

import re

from tstcli.data import documents, packing, shards
from tstcli.errors import DataError
from tstcli.parallel.engine import checkpointed_blocks
from tstcli.prep import location
from tstcli.prep.tokenizer import load_tokenizer
from tstcli.recipe import Recipe
from tstcli.run.checkpoint import checkpoint_bytes
from tstcli.run.load import meta_model
from tstcli.train.optim import route

GiB = 2 ** 30


def optimizer_groups(model, optimizer: str) -> dict:
    """Which parameters each optimizer group takes (`optim.route`): count, size and names, the blocks' names once
    for all layers (`layers.*.…`)."""
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    out = {}
    for group, names in route(model, optimizer).items():
        if names:
            patterns = dict.fromkeys(re.sub(r"^layers\.\d+\.", "layers.*.", n) for n in names)
            out[group] = {"tensors": len(names), "parameters": sum(sizes[n] for n in names), "names": list(patterns)}
    return out


def memory_per_device(r: Recipe, params: int, block_params: int, vocab_size: int, world_size: int,
                      muon_params: int = 0) -> dict:
    """Estimated peak bytes per device in training, by part (an estimate: allocator slack and temporaries aside).

    State: fp32 weights + grads + two AdamW moments = 16 B/param (12 for Muon's matrices: one momentum buffer;
    the whole matrix is gathered for its update, one at a time), all of it on every device under DDP, 1/N of it
    under FSDP2 plus the parameters of the block being computed and the next one (gathered in the compute dtype).
    Activations of one micro-batch (Korthikanti et al.): ~34·mb·L·dim bytes per block in bf16 without
    recomputation, 2·mb·L·dim (the block input) for a recomputed block; plus the loss's logits (see `loss_bytes`)
    and, in phase 1, the gathered bag embeddings (fp32, one per token averaged into a position: s in the full
    and input modes, 1 in the output mode). `logits` is the recipe's loss path;
    `logits_full` and `total_full_logits` are what the full-logits path (train.loss_chunk_size = 0) would need.
    """
    L, d, mb = r.train.seq_len, r.model.dim, r.train.rows_per_micro_batch(world_size)
    act = 4 if r.train.dtype == "fp32" else 2  # auto: bf16 on the GPUs a dry run plans for
    sharded = world_size > 1 and r.distributed.strategy == "fsdp"
    state = (16 * params - 4 * muon_params) / (world_size if sharded else 1)
    gathered = 2 * block_params * act if sharded else 0
    full_block = 17 * act * mb * L * d
    recomputed = len(checkpointed_blocks(r.distributed.activation_checkpointing, r.model.n_layers))
    blocks = (r.model.n_layers - recomputed) * full_block + recomputed * act * mb * L * d + (full_block if recomputed
                                                                                              else 0)
    positions = mb * L
    logits = loss_bytes(positions, vocab_size, d, r.train.loss_chunk_size, act)
    full = loss_bytes(positions, vocab_size, d, 0, act)
    bags = positions * r.plan.phase1.input_width * d * 4
    parts = {"state": state, "gathered_params": gathered, "activations": blocks, "logits": logits, "bags": bags}
    total = sum(parts.values())
    return {k: round(v / GiB, 3) for k, v in parts.items()} | {
        "total": round(total / GiB, 3), "logits_full": round(full / GiB, 3),
        "total_full_logits": round((total - logits + full) / GiB, 3)}


def loss_bytes(positions: int, vocab_size: int, dim: int, chunk_size: int, act: int) -> int:
    """Peak bytes of the loss. Full logits (chunk_size 0): the logits in the compute dtype, their fp32 copy and
    fp32 gradient. Chunked: one chunk's logits in the compute dtype, the fp32 buffer that becomes their gradient,
    its compute-dtype copy, plus what lives from forward to backward: dL/dW (V x dim) and dL/dh (positions x dim) in
    fp32."""
    if chunk_size == 0:
        return positions * vocab_size * (act + 8)
    chunk = min(chunk_size, positions)
    return chunk * vocab_size * (2 * act + 4) + 4 * vocab_size * dim + 4 * positions * dim


def build_plan(r: Recipe, vocab_size: int, manifest: dict | None, nprocs: list[int] | None = None) -> dict:
    model = meta_model(r.model, vocab_size)  # no memory, no time: works for any size
    params = sum(p.numel() for p in model.parameters())
    active = model.active_params()
    embedding = model.get_input_embeddings().weight.numel()
    block_params = sum(p.numel() for p in model.layers[0].parameters())
    L, B = r.train.seq_len, r.train.batch_size
    fpp = model.flops_per_position(L)
    widths, steps = r.plan.row_widths, r.plan.phase_steps
    ckpt_gib = checkpoint_bytes(model) / 2 ** 30
    groups = optimizer_groups(model, r.train.optimizer)
    muon = groups.get("muon", {}).get("parameters", 0)
    devices = {}
    for n in nprocs or [1]:
        mb = r.train.rows_per_micro_batch(n)
        fits = mb >= 1 and B % (n * mb) == 0
        devices[str(n)] = {
            "strategy": "single process" if n == 1 else r.distributed.strategy,
            "micro_batch_rows": mb, "rows_per_device": B // n,
            "accumulation_steps": B // (n * mb) if fits else None,
            "batch_splits": fits,
            "memory_gib": memory_per_device(r, params, block_params, vocab_size, n, muon),
            # checkpoint.async: each process copies its part of the state to host memory (its shard under FSDP2,
            # all of it otherwise) and keeps that copy until the write is done
            "checkpoint_staging_gib": (ckpt_gib / (n if n > 1 and r.distributed.strategy == "fsdp" else 1)
                                       if r.checkpoint.async_ else 0.0),
        }
    plan = {
        "parameters": params,
        "parameters_non_embedding": params - embedding,
        "parameters_active": active,
        "vocab_size": vocab_size,
        "flops_per_position": fpp,
        "flops_per_step": fpp * B * L,
        "flops_total": fpp * B * L * r.plan.last_step,
        "global_batch_rows": B, "seq_len": L, "global_batch_positions": B * L,
        "phases": {str(p): {"steps": steps[p], "row_tokens": widths[p], "tokens": steps[p] * B * widths[p],
                            "positions": steps[p] * B * L} for p in (1, 2)},
        "optimizers": groups,
        "devices": devices,
        "activation_checkpointing": r.distributed.activation_checkpointing,
        "checkpoint_gib": ckpt_gib, "checkpoint_async": r.checkpoint.async_,
        "coverage": None,
        "documents": None,
    }
    if manifest is not None:
        info, _ = packing.split_phases(r.plan, r.run.seed, r.data.mix, manifest)
        plan["coverage"] = info
        plan["documents"] = documents.effects(r, manifest)
    return plan


def plan_vocab_size(r: Recipe, manifest: dict | None) -> tuple[int, str | None]:
    """The vocabulary a dry run sizes the model for: the prepared data's, the BPE's target size, or the loaded
    tokenizer's (from a path or the local hub cache; never a network wait), else data.vocab_size with a note."""
    if manifest:
        return manifest["vocab_size"], None
    if r.data.tokenizer == "bpe":
        return r.data.vocab_size, None
    try:
        return load_tokenizer(r.data.tokenizer, local_only=True).get_vocab_size(with_added_tokens=True), None
    except DataError as e:
        return r.data.vocab_size, f"vocab: {r.data.vocab_size:,} from data.vocab_size ({e})"


def dry_run_plan(r: Recipe, nprocs: list[int]) -> tuple[dict, str | None]:
    """The plan for the recipe's data (prepared or not) and world sizes, and a note on the vocabulary if guessed."""
    data_dir = location.data_dir(r)
    manifest = shards.read_manifest(data_dir) if (data_dir / shards.MANIFEST).is_file() else None
    vocab, note = plan_vocab_size(r, manifest)
    return build_plan(r, vocab, manifest, nprocs), note
