"""What the verbs print: the end-of-training summary, the data coverage, the dry-run plan."""
from __future__ import annotations


def summary_lines(res: dict) -> list[str]:
    val = res["final_val_loss"]
    return [
        f"run: {res['run_dir']} ({res['steps']} steps, checkpoint {res['checkpoint']})",
        f"final held-out loss: {val:.4f}" if val is not None else "final held-out loss: n/a",
        f"tokens read: phase 1 {res['tokens_phase1']:,}, phase 2 {res['tokens_phase2']:,} "
        f"({res['positions']:,} positions, {res['flops']:.3e} FLOPs)",
        f"wall time: {res['wall_time_s']:.1f} s",
    ]


def coverage_lines(info: dict) -> list[str]:
    lines = []
    for p in ("1", "2"):
        ph = info["phases"][p]
        rep = "no repetition" if ph["epochs"] <= 1 else f"{ph['epochs']:.2f} epochs of its rows (repeats)"
        lines.append(f"phase {p}: {ph['steps']} steps x rows of {ph['row_width']} tokens -> "
                     f"{ph['tokens_needed']:,} tokens needed, {ph['tokens_available']:,} available ({rep})")
    for e in info.get("mix", []):
        for p in ("1", "2"):
            ph = e["phases"][p]
            if ph["steps"] == 0:
                continue
            rep = "no repetition" if ph["epochs"] <= 1 else f"{ph['epochs']:.2f} epochs (repeats)"
            lines.append(f"mix {e['name']}: phase {p} weight {ph['weight']:.3f}: {ph['tokens_needed']:,} tokens "
                         f"needed, {ph['tokens_available']:,} available ({rep})")
    short = [e["name"] for e in info.get("mix", []) if not e["covered_without_repetition"]]
    if short:
        lines.append(f"mixture entries too small for their weights, repeated (data.repeat): {', '.join(short)}")
    else:
        lines.append("corpus covers both phases without repetition" if info["covered_without_repetition"] else
                     "corpus too small for the recipe: phases re-read their rows in new orders (data.repeat)")
    return lines


def document_lines(d: dict | None) -> list[str]:
    """What `train.attention = "document"` and document-aware bags cost on this data (estimates)."""
    if not d:
        return []
    lines = [f"documents: attention {d['attention']}, bags {d['bag_boundaries']}; mean document "
             f"{d['mean_document_tokens']:,.0f} tokens (estimates, document ends taken at random; each train row "
             "gives its step's figures)"]
    if "attention_kept" in d:
        k = d["attention_kept"]
        lines.append(f"documents: the mask keeps about {k['1']:.1%} of phase 1's causal attention pairs, "
                     f"{k['2']:.1%} of phase 2's")
    if "bag_tokens_dropped" in d:
        lines.append(f"documents: document-aware bags drop about {d['bag_tokens_dropped']:.2%} of phase 1's tokens "
                     "(each document's short last bag)")
    return lines


def prepare_lines(out: dict) -> list[str]:
    tr, va, vocab = out["train_tokens"], out["val_tokens"], out["vocab_size"]
    lines = [f"data: {out['data_dir']} ({'up to date' if out['up_to_date'] else 'prepared'})",
             f"tokens: {tr:,} train ({out['train_documents']:,} documents), {va:,} validation "
             f"({out['val_documents']:,} documents), vocab {vocab:,}, {out['dtype']}"]
    if "seconds" in out:
        lines.append(f"time: {out['seconds']:.1f} s for {out['source_mb']:.1f} MB of sources "
                     f"({out['mb_per_s']:.1f} MB/s)")
    lines.append(f"pack: {out['pack']} ({'built' if out['pack_built'] else 'existing'})")
    lines += coverage_lines(out["coverage"])
    lines += document_lines(out.get("documents"))
    if out["verified"]:
        lines.append("verify: every shard matches its sha256 in the manifest")
    return lines


def worker_lines(out: dict) -> list[str]:
    """A worker that does not merge: what it did and what is left."""
    u = out.get("units")
    if out["up_to_date"] or not u:
        return [f"data: {out['data_dir']} ({'up to date' if out['up_to_date'] else 'prepared'})"]
    left = u["unfinished"]
    if not u["total"]:
        return [f"worker {out['worker']} of {out['workers']}: nothing to tokenize (token files are registered by "
                f"`tst prepare RECIPE --workers {out['workers']} --merge`)"]
    return [f"worker {out['worker']} of {out['workers']}: tokenized {u['tokenized_here']} work units; "
            f"{left} of {u['total']} units unfinished overall",
            "next: " + ("wait for the other workers, then " if left else "") +
            f"`tst prepare RECIPE --workers {out['workers']} --merge` writes the manifest"]


OPTIMIZER_GROUPS = {"muon": "muon", "adamw": "adamw", "adamw_no_decay": "adamw (no weight decay)"}


def plan_lines(r, p: dict) -> list[str]:
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
    for group, g in p["optimizers"].items():
        lines.append(f"optimizer {OPTIMIZER_GROUPS[group]}: {g['tensors']} tensors, {g['parameters']:,} parameters: "
                     + ", ".join(g["names"]))
    for ph in ("1", "2"):
        x = p["phases"][ph]
        name = f"superposition, s={r.tst.bag_size}, mode={r.tst.mode}" if ph == "1" else "next-token recovery"
        lines.append(f"phase {ph} ({name}): {x['steps']} steps, rows of {x['row_tokens']} tokens, "
                     f"{x['tokens']:,} raw tokens, {x['positions']:,} positions")
    if p["coverage"] is None:
        lines.append("coverage: unknown until the data is prepared (`tst prepare RECIPE`)")
    else:
        lines += ["coverage: " + x for x in coverage_lines(p["coverage"])]
        lines += document_lines(p["documents"])
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
        lines.append(f"  loss: {loss_path(r)}: logits {m['logits']:.1f} GiB; full logits would need "
                     f"{m['logits_full']:.1f} GiB (about {m['total_full_logits']:.1f} GiB per device)")
        if d["checkpoint_staging_gib"]:
            lines.append(f"  checkpoints written in the background (checkpoint.async): {d['checkpoint_staging_gib']:.1f}"
                         " GiB of host memory per process for the copy being written")
    lines.append(f"checkpoint: about {p['checkpoint_gib']:.1f} GiB (weights and optimizer state, fp32)")
    return lines


def loss_path(r) -> str:
    chunk = r.train.loss_chunk_size
    return "full logits (train.loss_chunk_size = 0)" if chunk == 0 else f"chunked, {chunk:,} positions at a time"


def eval_lines(out: dict) -> list[str]:
    lines = [f"model: {out['model']}"]
    held = out.get("heldout")
    if held is not None:
        where = held.get("corpus") or held["scored"]
        lines.append(f"held-out loss: {held['val_loss']:.4f} ({held['tokens']:,} tokens in {held['rows']} rows: "
                     f"{where})")
    for name, res in out["results"].items():
        metrics = ", ".join(f"{m} {res[m]:.4f} ± {res[m + '_stderr']:.4f}" for m in ("acc", "acc_norm") if m in res)
        lines.append(f"{name}: {metrics} (n={res['n']}, {out['num_fewshot']}-shot)")
        for cat, c in res.get("categories", {}).items():
            lines.append(f"  {cat}: acc {c['acc']:.4f} ± {c['acc_stderr']:.4f} (n={c['n']})")
    return lines
