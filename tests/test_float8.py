"""`train.float8` (issue #19): the hardware check refuses in one line (exit 2) wherever float8 cannot run, and the
conversion selects exactly the transformer blocks' linear layers (never the LM head, the embedding or a router;
never a matmul whose dimensions are not multiples of 16). The selection is a pure function, tested as such; the swap
and a float8 training run use torchao (a test dependency; it runs on a CPU through torch's CPU float8 matmul)."""
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from tstcli import recipe as recipes
from tstcli.errors import EXIT_USAGE, UsageError
from tstcli.model import Llama
from tstcli.parallel.engine import apply_activation_checkpointing
from tstcli.train import float8

ROOT = Path(__file__).resolve().parents[1]
ATTENTION, SWIGLU = ("wq", "wk", "wv", "wo"), ("w1", "w3", "w2")


def small_llama(*sets: str, vocab: int = 512) -> Llama:
    r = recipes.load(ROOT / "recipes" / "tiny.toml", ["model.dim=64", "model.n_layers=2", "model.n_heads=4",
                                                      "model.n_kv_heads=2", *sets])
    model = Llama(r.model, vocab)
    model.init_weights(torch.Generator().manual_seed(0))
    return model


def block_linears(n_layers: int, ffn: str = "feed_forward", attention=ATTENTION) -> list[str]:
    return [f"layers.{i}.{name}" for i in range(n_layers)
            for name in [f"attention.{a}" for a in attention] + [f"{ffn}.{w}" for w in SWIGLU]]


def refusal(device) -> str:
    with pytest.raises(UsageError) as e:
        float8.check(torch.device(device))
    assert e.value.exit_code == EXIT_USAGE
    message = e.value.message
    assert message.startswith("train.float8: ") and "\n" not in message, message
    return message


def fake_gpu(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_check_refuses_a_cpu_in_one_line():
    assert "cpu" in refusal("cpu")


def test_check_names_a_gpu_too_old_for_float8(monkeypatch):
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-80GB")
    message = refusal("cuda")
    assert "NVIDIA A100-SXM4-80GB" in message and "8.0" in message and "8.9" in message


def test_check_without_torchao_says_how_to_install_it(monkeypatch):
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` now raises ImportError
    monkeypatch.setitem(sys.modules, "torchao.float8", None)
    assert "pip install 'tst[float8]'" in refusal("cuda")


def test_check_passes_on_a_capable_gpu_with_torchao(monkeypatch):
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H200")
    ao = types.ModuleType("torchao")
    ao.float8 = types.ModuleType("torchao.float8")
    monkeypatch.setitem(sys.modules, "torchao", ao)
    monkeypatch.setitem(sys.modules, "torchao.float8", ao.float8)
    float8.check(torch.device("cuda"))


def test_selection_is_exactly_the_block_linears():
    model = small_llama()
    names = float8.float8_linear_names(model)
    assert names == block_linears(2)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears - set(names) == {"output"}  # the head stays out; the embedding is no Linear at all


def test_selection_skips_matmuls_not_multiples_of_16():
    model = small_llama("model.dim=48")  # 4 heads of 12: wq/wo are 48 x 48, wk/wv 24 x 48; SwiGLU 48 <-> 128
    assert float8.float8_linear_names(model) == block_linears(2, attention=("wq", "wo"))


def test_selection_keeps_the_router_and_routed_experts_out():
    model = small_llama("model.moe_experts=16", "model.moe_ffn_dim=32", "model.moe_shared_ffn_dim=32",
                        "model.tie_embeddings=false")
    names = float8.float8_linear_names(model)
    assert names == block_linears(2, ffn="feed_forward.shared")
    assert not any("router" in n for n in names)


def test_selection_names_follow_activation_checkpointing_wrappers():
    model = small_llama()
    apply_activation_checkpointing(model.layers, "full")
    names = float8.float8_linear_names(model)
    assert names == [n.replace("layers.0.", "layers.0._checkpoint_wrapped_module.")
                     .replace("layers.1.", "layers.1._checkpoint_wrapped_module.") for n in block_linears(2)]
    assert set(names) <= {n for n, _ in model.named_modules()}  # the names torchao's traversal will see


def test_module_filter_accepts_exactly_the_names():
    keep = float8.module_filter(["layers.0.attention.wq"])
    linear = nn.Linear(16, 16)
    assert keep(linear, "layers.0.attention.wq")
    assert not keep(linear, "layers.0.attention.wk") and not keep(linear, "output")


def test_convert_swaps_exactly_the_selection():
    from torchao.float8.float8_linear import Float8Linear  # a test dependency: never skipped

    model = small_llama("model.tie_embeddings=true")
    keys = list(model.state_dict())
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
    converted = float8.convert(model)
    assert converted == block_linears(2)
    swapped = {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert swapped == set(converted)
    assert type(model.output) is nn.Linear and type(model.tok_embeddings) is nn.Embedding
    assert model.output.weight is model.tok_embeddings.weight  # tying untouched
    assert list(model.state_dict()) == keys  # checkpoints and exports name the same tensors
    assert float8.convert(model) == []  # converting twice re-wraps nothing
    after = model(ids)  # float8 matmuls (torch's CPU _scaled_mm): close to the fp32 model, not equal to it
    assert not torch.equal(after, before)
    assert ((after - before).norm() / before.norm()).item() < 0.1
    after.float().pow(2).mean().backward()
    assert all(model.get_submodule(n).weight.grad is not None for n in converted)


def test_train_with_float8_on_a_cpu_is_one_line_exit_2_before_anything_is_written(small_data, tmp_path):
    from conftest import run_cli, small_recipe, write_recipe
    from test_cli_errors import assert_one_line_error

    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.float8": True}))
    r = run_cli("train", recipe, "--run-dir", tmp_path / "run")
    assert_one_line_error(r, 2, "train.float8", "compute capability 8.9")
    assert not (tmp_path / "run").exists()


def test_a_float8_run_trains_and_its_checkpoint_loads_into_a_plain_model(small_data, tmp_path):
    """The trainer converts before compile/FSDP wrap the blocks; the checkpoint names the same tensors, so export
    and eval load it into an ordinary model. (On a CPU through torch's CPU float8 matmul: the wiring, not speed.)"""
    from conftest import small_recipe
    from torchao.float8.float8_linear import Float8Linear

    from tstcli.run import checkpoint
    from tstcli.train.session import local_trainer

    r = small_recipe(small_data, **{"train.float8": True, "model.dim": 64, "train.steps": 4,
                                    "checkpoint.every": 4})
    t = local_trainer(r, tmp_path)
    assert {n for n, m in t.model.named_modules() if isinstance(m, Float8Linear)} == set(
        float8.float8_linear_names(t.model))
    t.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["kind"] == "train"]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    plain = Llama(r.model, t.model.output.weight.shape[0])
    checkpoint.load_weights(checkpoint.latest(tmp_path / "checkpoints"), plain)
    assert torch.equal(plain.layers[0].attention.wq.weight, t.model.layers[0].attention.wq.weight.detach())


@pytest.mark.slow
def test_a_compiled_float8_run_matches_the_eager_one(small_data, tmp_path):
    """`tst train` and bench_gpu compile the step after the conversion: torch.compile traces torchao's float8
    linears, forward and backward, and gives the eager float8 run's losses. (CPU inductor here: on a GPU the kernels
    differ, the traced graph does not.)"""
    from conftest import small_recipe

    from tstcli.train.session import local_trainer

    losses = {}
    for compiled in (False, True):
        r = small_recipe(small_data, **{"train.float8": True, "model.dim": 64, "train.steps": 3,
                                        "train.compile": compiled, "checkpoint.every": 100})
        local_trainer(r, tmp_path / str(compiled)).run()
        rows = [json.loads(line) for line in (tmp_path / str(compiled) / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [row["loss"] for row in rows if row["kind"] == "train"]
    assert len(losses[True]) == 3
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(losses[True], losses[False])), losses
