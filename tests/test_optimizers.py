"""`train.optimizer = "muon"`: which parameters go where, Muon's update against plain references (torch's own
Muon, a textbook Newton–Schulz), checkpoints that hold both optimizers and resume bitwise; `train.decay_shape`
against its formulas."""
import json
import math

import pytest
import torch

from conftest import resumed_from, run_cli, small_recipe, write_recipe
from test_resume import SHARD, assert_same_tensors, train_losses
from tstcli.model import Llama
from tstcli.recipe import ModelConfig, TrainConfig
from tstcli.schedule import lr_factor
from tstcli.train.muon import Muon, orthogonalize
from tstcli.train.optim import make_optimizer, route


def test_every_parameter_in_exactly_one_group_muon_takes_the_blocks_matrices():
    model = Llama(ModelConfig(moe_experts=4, moe_ffn_dim=32, qk_norm=True, tie_embeddings=False), 256)
    names = [n for n, _ in model.named_parameters()]
    groups = route(model, "muon")
    assert sorted(n for g in groups.values() for n in g) == sorted(names)  # each once
    muon = set(groups["muon"])
    assert "layers.0.attention.wq.weight" in muon and "layers.1.feed_forward.w2" in muon  # an expert stack
    assert {"tok_embeddings.weight", "output.weight", "layers.0.feed_forward.router.weight"} <= set(groups["adamw"])
    assert all(model.get_parameter(n).ndim == 1 for n in groups["adamw_no_decay"])
    assert not muon & {n for n in names if "norm" in n}
    assert route(model, "adamw")["muon"] == []
    opt = make_optimizer(model, TrainConfig(optimizer="muon"))
    assert [type(o).__name__ for o in opt.parts] == ["AdamW", "Muon"]
    assert {id(p) for p in opt.parts[1].param_groups[0]["params"]} == {id(model.get_parameter(n)) for n in muon}


def textbook_ns(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton–Schulz as Keller Jordan's post writes it, in float64: X ← aX + (bA + cA²)X, A = XXᵀ."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x.T if tall else x).float()


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_orthogonalize_in_fp32_equals_the_textbook_iteration(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = orthogonalize(g, torch.float32)
    assert got.dtype == torch.float32
    assert torch.allclose(got, textbook_ns(g), atol=1e-5, rtol=0)
    # and it orthogonalises: the singular values land near 1 (the quintic's band, roughly 0.7 to 1.2)
    sv = torch.linalg.svdvals(got)
    assert 0.6 < sv.min() and sv.max() < 1.25


def test_a_stack_of_matrices_is_orthogonalised_one_matrix_at_a_time():
    g = torch.randn(3, 16, 40, generator=torch.Generator().manual_seed(1))
    got = orthogonalize(g, torch.float32)
    for i in range(3):
        assert torch.allclose(got[i], orthogonalize(g[i], torch.float32), atol=1e-6, rtol=0)


def test_muon_step_equals_the_reference_update_in_fp32():
    """θ ← θ(1 − ηλ) − η·√max(1, out/in)·NS(g + μ·B), B = μB + (1−μ)g, over three steps."""
    gen = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(48, 16, generator=gen))
    ref, buf = w.detach().clone().double(), torch.zeros(48, 16, dtype=torch.float64)
    lr, mu, wd = 0.02, 0.95, 0.1
    opt = Muon([w], lr=lr, momentum=mu, weight_decay=wd, ns_dtype=torch.float32)
    for _ in range(3):
        g = torch.randn(48, 16, generator=gen)
        w.grad = g.clone()
        opt.step()
        buf = mu * buf + (1 - mu) * g.double()
        update = textbook_ns((g.double() + mu * (buf - g.double())).float()).double()  # g.lerp(buf, mu)
        ref = ref * (1 - lr * wd) - lr * math.sqrt(48 / 16) * update
    assert torch.allclose(w.detach().double(), ref, atol=1e-5, rtol=0)


def test_muon_in_bf16_is_bitwise_torch_optim_muon():
    gen = torch.Generator().manual_seed(3)
    a = torch.nn.Parameter(torch.randn(32, 20, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    ours = Muon([a], lr=0.02, momentum=0.95, weight_decay=0.1, ns_dtype=torch.bfloat16)
    theirs = torch.optim.Muon([b], lr=0.02, momentum=0.95, weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(32, 20, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        assert torch.equal(a, b)


def test_decay_shapes_follow_their_formulas():
    total, warmup, frac, m = 100, 10, 0.2, 0.1  # decay over steps 81..100, progress t = (step − 80) / 21
    for step in range(81, 101):
        t = (step - 80) / 21
        f = {shape: lr_factor(step, total, warmup, "wsd", frac, m, shape) for shape in ("linear", "sqrt", "cosine")}
        assert f["linear"] == pytest.approx(m + (1 - m) * (1 - t), abs=1e-12)
        assert f["sqrt"] == pytest.approx(m + (1 - m) * (1 - math.sqrt(t)), abs=1e-12)
        assert f["cosine"] == pytest.approx(m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t)), abs=1e-12)
    for shape in ("linear", "sqrt", "cosine"):  # warmup and stable phase are the shape's no business
        assert [lr_factor(s, total, warmup, "wsd", frac, m, shape) for s in (5, 10, 50, 80)] == [0.5, 1, 1, 1]
    # the linear form is the one runs were made with before the shapes: bit for bit
    assert lr_factor(90, total, warmup, "wsd", frac, m) == 1.0 - (1.0 - m) * (10 / 21)


def test_decay_shape_of_a_cosine_schedule_is_refused(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    r = run_cli("train", recipe, "--set", 'train.schedule="cosine"', "--set", 'train.decay_shape="sqrt"',
                "--dry-run")
    assert r.returncode == 2 and "train.decay_shape" in r.stderr and "Traceback" not in r.stderr


def test_dry_run_lists_each_optimizers_parameters(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.optimizer": "muon"}))
    r = run_cli("train", recipe, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    groups = json.loads(r.stdout)["optimizers"]
    assert groups["muon"]["tensors"] == 2 * 7 and "layers.*.attention.wq.weight" in groups["muon"]["names"]
    assert groups["adamw"]["names"] == ["tok_embeddings.weight"]  # tied with the head
    assert sum(g["parameters"] for g in groups.values()) == json.loads(r.stdout)["parameters"]


@pytest.fixture(scope="module")
def muon_run(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("muon")
    recipe = write_recipe(tmp / "r.toml", small_recipe(small_data, **{"train.optimizer": "muon",
                                                                      "train.muon_weight_decay": 0.1}))
    r = run_cli("train", recipe, "--run-dir", tmp / "a")
    assert r.returncode == 0, r.stderr
    return tmp / "a"


def test_muon_run_checkpoints_both_optimizers_and_learns(muon_run):
    from safetensors import safe_open
    with safe_open(str(muon_run / "checkpoints/step-00000012" / SHARD), "pt") as f:
        keys = set(f.keys())
    assert "optim.state.layers.0.attention.wq.weight.momentum_buffer" in keys  # Muon's
    assert "optim.state.tok_embeddings.weight.exp_avg_sq" in keys  # AdamW's
    assert not any(k.startswith("optim.state.layers.0.attention.wq.weight.exp_avg") for k in keys)
    losses = train_losses(muon_run)
    assert losses[12] < losses[7] and all(math.isfinite(x) for x in losses.values())


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [4, 6, 8], ids=["phase-1", "at-the-switch", "phase-2"])
def test_muon_resume_is_bitwise(muon_run, tmp_path, stop_at):
    b = tmp_path / "b"
    r = resumed_from(muon_run, b, stop_at)
    assert r.returncode == 0, r.stderr
    assert train_losses(b) == train_losses(muon_run)
    assert_same_tensors(b / "checkpoints/step-00000012" / SHARD, muon_run / "checkpoints/step-00000012" / SHARD)


def test_reset_optimizer_at_the_switch_resets_both(small_data, tmp_path):
    from tstcli.train.hooks.switch import PhaseSwitch
    from tstcli.train.session import local_trainer
    t = local_trainer(small_recipe(small_data, **{"train.optimizer": "muon", "tst.reset_optimizer": True}),
                      tmp_path, hooks=[])
    t.train_step(1)
    assert all(len(o.state) > 0 for o in t.optimizer.parts)
    PhaseSwitch().apply(t)
    assert [type(o).__name__ for o in t.optimizer.parts] == ["AdamW", "Muon"]
    assert all(len(o.state) == 0 for o in t.optimizer.parts)


def test_a_non_finite_step_leaves_both_optimizers_untouched():
    """`apply_update` with ok = False: no weight, moment or momentum buffer changes (AdamW and Muon alike)."""
    from tstcli.train.optim import apply_update
    model = Llama(ModelConfig(dim=32, n_layers=1, n_heads=4, tie_embeddings=False), 64)
    opt = make_optimizer(model, TrainConfig(optimizer="muon"))
    for ok in (True, False):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.1 if ok else float("nan"))
        weights = [p.detach().clone() for p in model.parameters()]
        state = [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
        apply_update(opt, torch.tensor(ok))
        changed = any(not torch.equal(a, b) for a, b in zip(weights, model.parameters()))
        assert changed == ok
        if not ok:
            after = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
            assert all(torch.equal(a, b) for a, b in zip(state, after)) and len(state) == len(after)
    assert all(p.grad is None for p in model.parameters())
