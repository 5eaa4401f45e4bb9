"""The model's inference fast paths compute the numbers its training path computes, bit for bit: the fused RMSNorm
against transformers' LlamaRMSNorm formula (values and gradients), and the in-place SwiGLU and RoPE that run when
autograd is off."""
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
