"""The model's inference fast paths compute the numbers its training path computes, bit for bit: the fused RMSNorm
against transformers' LlamaRMSNorm formula (values and gradients), and the in-place SwiGLU and RoPE that run when
autograd is off; `keep_last` (the last block for the last positions only) gives the whole forward's last positions."""
from __future__ import annotations

import pytest
import torch

from tstcli.model import Llama, llama
from tstcli.model.layers import RMSNorm, SwiGLU
from tstcli.recipe import ModelConfig


def _reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward, written out."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [32, 128, 1000])
def test_rms_norm_is_transformers_formula_bit_for_bit(dtype, dim):
    g = torch.Generator().manual_seed(dim)
    norm = RMSNorm(dim, 1e-5)
    norm.weight.data = torch.rand(dim, generator=g) + 0.5
    x = (3 * torch.randn(5, 17, dim, generator=g)).to(dtype)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref_w = norm.weight.detach().clone().requires_grad_()
    ours, ref = norm(ours_x), _reference_rms_norm(ref_x, ref_w, 1e-5)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
    ours.square().sum().backward()
    ref.square().sum().backward()
    assert torch.equal(ours_x.grad, ref_x.grad) and torch.equal(norm.weight.grad, ref_w.grad)


def test_swiglu_in_inference_is_the_training_path_and_leaves_its_input_alone():
    torch.manual_seed(0)
    ffn, x = SwiGLU(64, 96), torch.randn(3, 11, 64)
    before = x.clone()
    with torch.no_grad():
        fast = ffn(x)
    assert torch.equal(fast, ffn(x)) and torch.equal(x, before)


def test_rope_in_inference_is_the_training_path_and_leaves_its_input_alone():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 4, 16, generator=g).transpose(1, 2)  # (B, H, T, d), strided as the model's views
    cos, sin = torch.randn(2, 1, 11, 16, generator=g), torch.randn(2, 1, 11, 16, generator=g)
    before = x.clone()
    with torch.no_grad():
        fast = llama.rope(x, cos, sin)
    assert torch.equal(fast, llama.rope(x, cos, sin)) and torch.equal(x, before)


@pytest.mark.parametrize("packed", [False, True], ids=["causal", "positions-and-mask"])
def test_model_forward_without_autograd_equals_with_it(packed):
    """Every inference-only path but the query chunks (rows here are shorter than QUERY_CHUNK): the same hidden
    states, bit for bit, with autograd on and off."""
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
    model = Llama(cfg, 97)
    model.init_weights(torch.Generator().manual_seed(0))
    ids = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    kw = {}
    if packed:  # a prefix of 20, then two branches of 10 at the positions they would have alone
        kw["positions"] = torch.tensor([*range(20), *range(20, 30), *range(20, 30)]).expand(3, -1)
        seg = torch.tensor([0] * 20 + [1] * 10 + [2] * 10)
        seen = ((seg[None, :] == 0) | (seg[None, :] == seg[:, None])) & torch.ones(40, 40, dtype=torch.bool).tril()
        kw["mask"] = torch.zeros(3, 1, 40, 40).masked_fill_(~seen, float("-inf"))
    with torch.no_grad():
        fast = model(input_ids=ids, **kw)
    assert torch.equal(fast, model(input_ids=ids, **kw).detach())


EPS = torch.finfo(torch.float32).eps


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "moe_experts": 4, "moe_top_k": 2}], ids=["dense", "moe"])
@pytest.mark.parametrize("keep", [1, 7, 40])
@pytest.mark.parametrize("packed", [False, True], ids=["causal", "positions-and-mask"])
def test_keep_last_gives_the_last_positions_of_the_whole_forward(overrides, keep, packed):
    """`keep_last=k`: the hidden states of the last k positions, the last block computing only those, equal the
    whole forward's last k (to fp32 precision: the last block's matrices have fewer rows); a chunked row too."""
    cfg = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=160, **overrides)
    model = Llama(cfg, 97)
    model.init_weights(torch.Generator().manual_seed(0))
    T = 150  # > QUERY_CHUNK: the explicit mask's rows go through the query chunks
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))
    kw = {}
    if packed:  # a prefix of 50, then two branches of 50 at the positions they would have alone
        kw["positions"] = torch.tensor([*range(100), *range(50, 100)]).expand(2, -1)
        seg = torch.tensor([0] * 50 + [1] * 50 + [2] * 50)
        seen = ((seg[None, :] == 0) | (seg[None, :] == seg[:, None])) & torch.ones(T, T, dtype=torch.bool).tril()
        kw["mask"] = torch.zeros(2, 1, T, T).masked_fill_(~seen, float("-inf"))
    with torch.no_grad():
        whole, last = model(input_ids=ids, **kw), model(input_ids=ids, keep_last=keep, **kw)
    assert last.shape == (2, keep, 64)
    assert torch.allclose(last, whole[:, -keep:], rtol=0, atol=64 * EPS * whole.abs().max().item())


def test_keep_last_after_a_cache():
    """With a KV cache the kept queries are the last of the new positions and still see every cached key."""
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    model = Llama(cfg, 97)
    model.init_weights(torch.Generator().manual_seed(0))
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(input_ids=ids)
        cache = model.new_cache(2)
        model(input_ids=ids[:, :20], cache=cache)
        last = model(input_ids=ids[:, 20:], cache=cache, keep_last=4)
    assert torch.allclose(last, whole[:, -4:], rtol=0, atol=64 * EPS * whole.abs().max().item())
