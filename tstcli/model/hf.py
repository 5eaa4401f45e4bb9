"""The native model <-> Hugging Face transformers mapping, both directions: tensor names and config.json.

A dense model is `LlamaForCausalLM`, one with QK-norm `Qwen3ForCausalLM`, the mixture of experts
`Qwen3MoeForCausalLM`. The native model uses the rotate-half RoPE layout of transformers, so the conversion is a
renaming of tensors (and, for experts, splitting the stacked 3-D expert weights into the per-expert matrices of the
hub layout): no permutation of the query/key projections (the step that made torchtitan's DCP->HF conversions
produce gibberish). Used by `tst export` (native -> HF) and by loading an export (HF -> native).
"""
from __future__ import annotations

import torch

from tstcli import __version__
from tstcli.errors import CheckpointError, UsageError
from tstcli.recipe import ModelConfig

HF_NAMES = {"float32": "float32", "bfloat16": "bfloat16"}


RENAME = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
          "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
          "attention.q_norm": "self_attn.q_norm", "attention.k_norm": "self_attn.k_norm",
          "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj",
          "feed_forward.router": "mlp.gate"}
# Stacked expert weights (E, in, out) -> per-expert matrices (out, in) named mlp.experts.{e}.<name>.weight.
EXPERTS = {"feed_forward.w1": "gate_proj", "feed_forward.w3": "up_proj", "feed_forward.w2": "down_proj"}


def architecture(cfg: ModelConfig) -> str:
    """The transformers model_type a native model exports as."""
    if cfg.moe_experts:
        if cfg.moe_shared_ffn_dim:
            raise UsageError("model.moe_shared_ffn_dim: Qwen3-MoE has no shared expert, so this model has no "
                             "standard Hugging Face form to export to")
        return "qwen3_moe"
    return "qwen3" if cfg.qk_norm else "llama"


def hf_pieces(name: str, t: torch.Tensor, cfg: ModelConfig) -> list[tuple[str, torch.Tensor]]:
    """One native tensor under transformers' names: itself renamed, or (stacked experts) one matrix per expert;
    nothing for the head when it is tied to the embedding."""
    if name == "tok_embeddings.weight":
        return [("model.embed_tokens.weight", t)]
    if name == "norm.weight":
        return [("model.norm.weight", t)]
    if name == "output.weight":
        return [] if cfg.tie_embeddings else [("lm_head.weight", t)]
    i, rest = name[len("layers."):].split(".", 1)
    if cfg.moe_experts and rest in EXPERTS:
        return [(f"model.layers.{i}.mlp.experts.{e}.{EXPERTS[rest]}.weight", t[e].t()) for e in range(t.shape[0])]
    for ours, theirs in RENAME.items():
        if rest.startswith(ours + "."):
            return [(f"model.layers.{i}.{theirs}{rest[len(ours):]}", t)]
    raise RuntimeError(f"no Hugging Face name for {name}")  # a new parameter without a mapping must fail loudly


def export_order(names) -> list[str]:
    """Embedding, final norm and head first, then the blocks: the order (and so the shard layout) of an export."""
    first = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    return [n for n in first if n in names] + [n for n in names if n not in first]


def native_target(name: str) -> tuple[str, int | None] | None:
    """Where a transformers tensor goes in the native model: (native name, expert index or None), transposed when
    it is an expert's matrix; None for a tensor the native model does not keep (RoPE's inverse frequencies)."""
    if name == "model.embed_tokens.weight":
        return "tok_embeddings.weight", None
    if name == "model.norm.weight":
        return "norm.weight", None
    if name == "lm_head.weight":
        return "output.weight", None
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name.startswith("model.layers."):
        i, rest = name[len("model.layers."):].split(".", 1)
        if rest.startswith("mlp.experts."):
            e, proj = rest[len("mlp.experts."):].split(".", 1)
            ours = {v: k for k, v in EXPERTS.items()}.get(proj.removesuffix(".weight"))
            if ours is not None and e.isdigit():
                return f"layers.{i}.{ours}", int(e)
        else:
            for ours, theirs in RENAME.items():
                if rest.startswith(theirs + "."):
                    return f"layers.{i}.{ours}{rest[len(theirs):]}", None
    raise CheckpointError(f"unsupported tensor {name!r} in an export")


def hf_config(m: ModelConfig, vocab_size: int, eot_id: int, dtype: torch.dtype) -> dict:
    arch = architecture(m)
    dtype_name = HF_NAMES[str(dtype).removeprefix("torch.")]
    config = {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                           "qwen3_moe": "Qwen3MoeForCausalLM"}[arch]], "model_type": arch,
        "vocab_size": vocab_size, "hidden_size": m.dim, "intermediate_size": m.intermediate,
        "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads, "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_size, "hidden_act": "silu", "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "tie_word_embeddings": m.tie_embeddings, "attention_bias": False, "attention_dropout": 0.0,
        "initializer_range": m.init_std, "bos_token_id": eot_id, "eos_token_id": eot_id,
        "torch_dtype": dtype_name, "dtype": dtype_name, "use_cache": True,
        "tst_version": __version__,
    }
    if arch == "llama":
        config["mlp_bias"] = False
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.n_layers)
    if arch == "qwen3_moe":
        config.update(num_experts=m.moe_experts, num_experts_per_tok=m.moe_top_k,
                      moe_intermediate_size=m.expert_intermediate, norm_topk_prob=m.moe_norm_topk,
                      decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=m.moe_aux_loss_coef,
                      output_router_logits=False)
    return config


def model_config(c: dict) -> ModelConfig:
    """The native model configuration of a transformers config.json written by `hf_config` (or compatible)."""
    arch = c.get("model_type")
    if arch not in ("llama", "qwen3", "qwen3_moe"):
        raise CheckpointError(f"model_type {arch!r}; supported: llama, qwen3, qwen3_moe")
    theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    moe = {}
    if arch == "qwen3_moe":
        if c.get("mlp_only_layers") or c.get("decoder_sparse_step", 1) != 1:
            raise CheckpointError("a Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step) is not "
                                  "supported")
        moe = dict(moe_experts=c["num_experts"], moe_top_k=c["num_experts_per_tok"],
                   moe_ffn_dim=c["moe_intermediate_size"], moe_norm_topk=bool(c.get("norm_topk_prob", False)))
    return ModelConfig(dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                       n_kv_heads=c.get("num_key_value_heads") or 0, ffn_dim=c["intermediate_size"],
                       head_dim=c.get("head_dim") or 0, qk_norm=arch != "llama",
                       max_seq_len=c["max_position_embeddings"], rope_theta=float(theta),
                       norm_eps=c["rms_norm_eps"], tie_embeddings=bool(c.get("tie_word_embeddings", False)), **moe)


