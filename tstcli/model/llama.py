"""A Llama-style decoder: RMSNorm, RoPE (rotate-half, as transformers' Llama), SwiGLU, grouped-query attention,
optional tied embeddings, no biases. With `qk_norm`, an explicit `head_dim` and `moe_experts` it is the Qwen3-MoE
architecture (per-head RMSNorm on queries and keys, routed experts in place of the dense SwiGLU: see moe.py).
It takes token ids or input embeddings and returns final hidden states (and, on request, an `AuxOutput`: its own
auxiliary losses and metrics, e.g. the routers'); `logits()` applies the output head. Nothing here knows about
token superposition, and nothing here knows about parallelism (activation checkpointing, compile, DDP/FSDP2 are
applied from outside: `tstcli.parallel.engine`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tstcli.model import documents as docs
from tstcli.model.kv_cache import BlockCache, KVCache
from tstcli.model.layers import AuxOutput, RMSNorm, SwiGLU
from tstcli.model.moe import MoEFeedForward, RouterStats
from tstcli.recipe import ModelConfig


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # On the CPU even under a meta-device context: meta arithmetic imports torch._dynamo (~0.5 s), and the tables
    # are small and recomputed where the model is materialised.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32, device="cpu"), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin; in inference two of its five new tensors written in place (same numbers)."""
    if torch.is_grad_enabled():
        return x * cos + rotate_half(x) * sin
    return rotate_half(x).mul_(sin).add_(x * cos)


QUERY_CHUNK = 64  # queries per attention call under an explicit mask, in inference


def causal_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q (B, H, T, d) to k, v (B, H_kv, S, d) under `mask` (B, 1, T, S), as (B, T, H, d): QUERY_CHUNK
    queries at a time, each chunk against the keys up to its last query's own position (S - T + its index): an
    explicit mask never lets a query see a later key, so these are all the keys it can see, and the softmax is the
    same. A dense mask makes the CPU kernel compute every pair; this skips the upper triangle (rows of ~300
    positions: ~35% less attention time). Inference only: training keeps one call, whose backward needs no sum
    over chunks."""
    B, H, T, d = q.shape
    S, gqa = k.shape[2], H != k.shape[1]  # grouped-query heads read in place, not copied per query head
    out = q.new_empty(B, T, H, d)  # written chunk by chunk, in the layout the output projection reads
    for a in range(0, T, QUERY_CHUNK):
        b = min(T, a + QUERY_CHUNK)
        end = S - T + b
        out[:, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :end], v[:, :, :end],
                                                     attn_mask=mask[..., a:b, :end], enable_gqa=gqa).transpose(1, 2)
    return out


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.kv_heads
        self.head_dim = cfg.head_size
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: BlockCache | None = None,
                mask: torch.Tensor | None = None, keep_last: int | None = None) -> torch.Tensor:
        """Attention output (B, Tq, dim) of the last Tq = keep_last (default all T) positions of x (B, T, dim),
        whose keys and values all positions give."""
        B, T, _ = x.shape
        Tq = T if keep_last is None else keep_last
        q = self.wq(x[:, T - Tq:]).view(B, Tq, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim)
        if self.q_norm is not None:  # Qwen3: per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = rope(q, cos[..., T - Tq:, :], sin[..., T - Tq:, :]), rope(k, cos, sin)
        if cache is not None:  # attend to the cached positions too
            k, v = cache.append(k, v)
        S = k.shape[2]  # query i sits at position S - Tq + i
        causal = mask is None and Tq == S  # an explicit mask (B, 1, T, S) replaces the causal one
        if isinstance(mask, docs.BlockMask):  # documents on CUDA: flex attention, GQA without copies
            if Tq != T:
                raise ValueError("keep_last does not combine with a document BlockMask")
            y = docs.flex_attention(q, k, v, block_mask=mask, enable_gqa=self.n_kv != self.n_heads)
            return self.wo(y.transpose(1, 2).reshape(B, T, -1))
        if mask is not None:
            mask = mask[..., T - Tq:, :]
        elif 1 < Tq < S:
            mask = torch.ones(Tq, S, dtype=torch.bool, device=x.device).tril(diagonal=S - Tq)
        if mask is not None and Tq > QUERY_CHUNK and not torch.is_grad_enabled():
            return self.wo(causal_chunks(q, k, v, mask).view(B, Tq, -1))
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.wo(y.transpose(1, 2).reshape(B, Tq, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.moe = cfg.moe_experts > 0
        self.feed_forward = (MoEFeedForward(cfg.dim, cfg.moe_experts, cfg.moe_top_k, cfg.expert_intermediate,
                                            cfg.moe_norm_topk, cfg.moe_shared_ffn_dim) if self.moe
                             else SwiGLU(cfg.dim, cfg.intermediate))

    def forward(self, x, cos, sin, cache: BlockCache | None = None, mask: torch.Tensor | None = None,
                keep_last: int | None = None):
        """(output, RouterStats of this block or None when dense); with `keep_last`, the output of only the last
        keep_last positions (what a scorer reads from the last block)."""
        y = self.attention(self.attention_norm(x), cos, sin, cache, mask, keep_last)
        x = (x if keep_last is None else x[:, x.shape[1] - keep_last:]) + y
        if self.moe:
            y, stats = self.feed_forward(self.ffn_norm(x))
            return x + y, stats
        return x + self.feed_forward(self.ffn_norm(x)), None


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_size, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def materialize(self, device: torch.device, dtype: torch.dtype) -> "Llama":
        """A model built on the meta device, given uninitialised storage on `device` in `dtype` (weights are loaded
        next); the RoPE tables, which no checkpoint holds, recomputed there in fp32."""
        # torch.empty rather than Module.to_empty, whose empty_like of a meta tensor imports torch's meta
        # registrations and sympy (~0.4 s of every `tst eval`)
        for module in self.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(torch.empty(p.shape, device=device, dtype=dtype), p.requires_grad))
        if self.cfg.tie_embeddings:  # each module got its own storage: tie them again
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(self.cfg.head_size, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)
        return self

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_std) for matrices, scaled by 1/sqrt(2·layers) on residual outputs; ones for norms."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            else:
                residual_out = name.endswith(("wo.weight", "w2.weight", "feed_forward.w2"))
                s = std / math.sqrt(2 * self.cfg.n_layers) if residual_out else std
                nn.init.normal_(p, 0.0, s, generator=generator)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_embeddings

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                with_aux: bool = False, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, documents: torch.Tensor | None = None,
                keep_last: int | None = None):
        """Final hidden states (B, T, dim) from token ids (B, T) or input embeddings (B, T, dim); with `with_aux`,
        also the model's `AuxOutput` (for a mixture of experts: the routers' losses and statistics averaged over
        its blocks; empty for a dense model). With a `cache` (generation), the T positions continue those cached
        and are appended to it. Several sequences packed in one row: `positions` (B, T), each token's position in
        its own sequence, and `mask` (B, 1, T, T, bool), which keys each query may see, in place of causal (never a
        later key: inference computes it in query chunks, `causal_chunks`); or `documents` (B, T), each position's
        document, from which both follow (`documents.py`). With `keep_last`, the hidden states of only the last
        keep_last positions (B, keep_last, dim), and the last block computes only those (their keys and values
        still come from every position): transformers' `logits_to_keep`, taken one block further."""
        h = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if documents is not None:
            positions = docs.document_positions(documents)
            mask = (docs.block_mask(documents) if documents.device.type == "cuda" else
                    docs.additive_mask(documents, torch.get_autocast_dtype(h.device.type)
                                       if torch.is_autocast_enabled(h.device.type) else h.dtype))
        start, T = (cache.pos if cache is not None else 0), h.shape[1]
        if positions is None:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        else:  # (B, 1, T, head_dim): broadcast over the heads
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        total, last = None, len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h, stats = layer(h, cos, sin, None if cache is None else cache.block(i), mask,
                             keep_last if i == last else None)
            if stats is not None:
                total = stats if total is None else total + stats
        if cache is not None:
            cache.advance(T)
        h = self.norm(h)
        if not with_aux:
            return h
        return h, self._aux(total)

    def _aux(self, total: RouterStats | None) -> AuxOutput:
        if total is None:
            return AuxOutput()
        n, m = len(self.layers), self.cfg
        aux, z, load = total.aux_loss / n, total.z_loss / n, total.load / n
        return AuxOutput(loss=m.moe_aux_loss_coef * aux + m.moe_z_loss_coef * z,
                         metrics={"moe_aux_loss": aux.detach(), "moe_z_loss": z.detach(), "expert_load": load})

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` positions (default: the model's context)."""
        w = self.tok_embeddings.weight
        return KVCache(len(self.layers), batch, self.cfg.kv_heads, max_len or self.cfg.max_seq_len,
                       self.cfg.head_size, dtype or w.dtype, w.device)

    def head_weight(self) -> torch.Tensor:
        """The output head's matrix (V, dim) — the input embedding when tied — for a loss that applies the head
        itself, chunk by chunk, rather than through `logits()`."""
        return self.output.weight

    def matmul_params(self) -> int:
        """Parameters one position multiplies by (all Linear weights, the output head included; for MoE blocks the
        router, the top-k experts and the shared expert: the *active* parameters)."""
        moe = [m for m in self.modules() if isinstance(m, MoEFeedForward)]
        inside_moe = {id(p) for m in moe for p in m.modules() if isinstance(p, nn.Linear)}
        dense = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear) and id(m) not in inside_moe)
        return dense + sum(m.active_matmul_params() for m in moe)

    def active_params(self) -> int:
        """Parameters a position touches: the active matmul parameters, norms and its own embedding row."""
        norms = sum(p.numel() for p in self.parameters() if p.ndim == 1)
        return self.matmul_params() + norms + (0 if self.cfg.tie_embeddings else self.cfg.dim)

    def flops_per_position(self, seq_len: int) -> int:
        """Training FLOPs per latent position: 6·N (active matmul params) + 12·layers·(heads·head_dim)·seq_len
        (attention scores), the PaLM/Chinchilla convention (attention counted non-causally)."""
        attn_width = self.cfg.n_heads * self.cfg.head_size
        return 6 * self.matmul_params() + 12 * self.cfg.n_layers * attn_width * seq_len
