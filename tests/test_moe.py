"""Mixture of experts (Qwen3-MoE style): the grouped expert computation equals the plain loop over experts
(outputs and gradients), a tiny MoE trains through both TST phases with held-out loss falling and resumes exactly,
and the router statistics reach the metrics."""
import json
import shutil

import pytest
import torch

from conftest import run_cli, small_recipe, train_small
from tstcli.model.moe import MoEFeedForward

MOE = {"model.moe_experts": 4, "model.moe_top_k": 2, "model.moe_ffn_dim": 32, "model.qk_norm": True,
       "model.moe_z_loss_coef": 1e-3}


@pytest.mark.parametrize("dim,ffn,shared", [(16, 32, 0), (12, 20, 0), (16, 32, 24)],
                         ids=["grouped-mm", "per-expert-slices", "shared-expert"])
@pytest.mark.parametrize("norm_topk", [True, False])
def test_grouped_experts_equal_the_reference_loop(dim, ffn, shared, norm_topk):
    torch.manual_seed(0)
    moe = MoEFeedForward(dim, n_experts=5, top_k=2, ffn_dim=ffn, norm_topk=norm_topk, shared_ffn_dim=shared)
    for p in moe.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    x = torch.randn(3, 7, dim, requires_grad=True)
    out, stats = moe(x)
    ref = moe.reference_forward(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, *moe.parameters()])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *moe.parameters()])
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert stats.load.sum().item() == pytest.approx(1.0) and stats.load.shape == (5,)
    assert stats.aux_loss.item() >= 0 and stats.z_loss.item() > 0


def test_balanced_routing_gives_aux_loss_top_k():
    moe = MoEFeedForward(8, n_experts=4, top_k=2, ffn_dim=16, norm_topk=True, shared_ffn_dim=0)
    torch.nn.init.zeros_(moe.router.weight)  # every expert equally likely...
    _, _, _, stats = moe.route(torch.randn(64, 8))
    # ...all ties break to the same 2 experts: loads 1/2, 1/2, 0, 0 and aux = E·Σ f·P = 4·(1·1/4 + 1·1/4) = 2
    assert stats.aux_loss.item() == pytest.approx(2.0)


@pytest.mark.slow
def test_tiny_moe_trains_through_both_phases_and_resumes_exactly(small_data, tmp_path):
    _, run = train_small(small_data, tmp_path, **MOE)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    val = [r["val_loss"] for r in rows if r["kind"] == "val"]
    assert {r["phase"] for r in train} == {1, 2}
    assert val[-1] < val[0] - 0.3, val
    assert all(0 <= r["expert_load_min"] <= 0.25 <= r["expert_load_max"] <= 1 for r in train)
    assert all(r["moe_aux_loss"] > 0 and r["moe_z_loss"] > 0 for r in train)
    b = tmp_path / "b"
    shutil.copytree(run, b)
    for ckpt in (b / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > 4:
            shutil.rmtree(ckpt)
    r = run_cli("resume", b)
    assert r.returncode == 0, r.stderr
    losses = lambda d: [(x["step"], x["loss"], x["moe_aux_loss"]) for x in map(json.loads, (d / "metrics.jsonl")
                        .read_text().splitlines()) if x["kind"] == "train"]
    assert losses(b) == losses(run)


def test_active_parameters_and_flops_count_only_the_routed_experts(small_data):
    from tstcli.model import Llama
    m = Llama(small_recipe(small_data, **MOE).model, 512)  # dim 32, 2 layers, 4 heads of 8, 2 kv heads, tied
    attention = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32
    router, expert = 32 * 4, 3 * 32 * 32
    head = 512 * 32
    experts_stored = sum(p.numel() for n, p in m.named_parameters() if ".feed_forward.w" in n)
    assert experts_stored == 2 * 4 * expert  # all 4 experts of both layers exist...
    assert m.matmul_params() == 2 * (attention + router + 2 * expert) + head  # ...a position uses its top 2
    assert m.flops_per_position(32) == 6 * m.matmul_params() + 12 * 2 * 32 * 32
