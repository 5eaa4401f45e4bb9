"""`tst export`: a standard Hugging Face Llama checkpoint whose logits equal the native model's."""
import json

import pytest
import torch
from safetensors import safe_open

from conftest import run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from tstcli.export import writer
from tstcli.run.load import from_run


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def run(request, small_data, tmp_path_factory):
    if request.param:  # tied is the SMALL recipe's default: conftest's finished run (12 steps), only read here
        return request.getfixturevalue("finished_run")
    tmp = tmp_path_factory.mktemp("export")
    r = small_recipe(small_data, **{"model.tie_embeddings": False, "train.steps": 4})
    res = run_cli("train", write_recipe(tmp / "r.toml", r), "--run-dir", tmp / "run")
    assert res.returncode == 0, res.stderr
    return tmp / "run"


def _native(run_dir):
    return from_run(run_dir, None).model


@pytest.mark.slow
def test_export_loads_in_transformers_with_the_same_logits(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "hf"
    r = run_cli("export", run, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["self_test_max_abs_diff"] is not None and res["self_test_max_abs_diff"] <= 1e-4
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= set(res["files"])
    config = json.loads((out / "config.json").read_text())
    native = _native(run)
    assert config["num_key_value_heads"] == 2 and config["num_attention_heads"] == 4
    assert config["tie_word_embeddings"] == native.cfg.tie_embeddings
    # an independent check, not the self-test's own numbers
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.randint(0, native.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(input_ids=ids).logits - native.logits(native(input_ids=ids))).abs().max().item()
    assert diff <= 1e-4
    tok = AutoTokenizer.from_pretrained(str(out))
    from tokenizers import Tokenizer
    text = "Call me Ishmael. Some years ago—never mind how long precisely"
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(run / "tokenizer.json")).encode(text).ids
    assert tok.eos_token == "<|endoftext|>"


@pytest.mark.slow
def test_bf16_export_and_refusal_to_overwrite(run, tmp_path):
    out = tmp_path / "hf16"
    assert run_cli("export", run, "--out", out, "--dtype", "bf16").returncode == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert_one_line_error(run_cli("export", run, "--out", out), 2, "not empty", "--force")
    assert run_cli("export", run, "--out", out, "--force", "--step", "4").returncode == 0
    assert_one_line_error(run_cli("export", run, "--out", tmp_path / "x", "--step", "3"), 4, "step 3")
    assert_one_line_error(run_cli("export", run, "--out", tmp_path / "x", "--dtype", "fp16"), 2, "--dtype")
    assert not (tmp_path / "x").exists()


def test_sharded_export_writes_an_index_that_transformers_loads(run, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(writer, "MAX_SHARD", "20KB")
    res = writer.export(run, None, tmp_path / "sharded", "fp32", False)
    assert "model.safetensors.index.json" in res["files"] and res["self_test_max_abs_diff"] <= 1e-4
    assert len([f for f in res["files"] if f.startswith("model-")]) > 2
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "sharded"))


def test_a_weight_mapping_error_fails_the_export_and_writes_nothing(run, tmp_path, monkeypatch):
    """A wrong layout (q projections permuted, as a wrong RoPE convention would) gives logits that transformers and
    the native model loaded from the export agree on: the self-test catches it on the weights, which must equal the
    checkpoint's."""
    real = writer.hf_pieces

    def broken(name, t, cfg):
        pieces = real(name, t, cfg)
        if name != "layers.0.attention.wq.weight":
            return pieces
        return [(n, p.view(4, 2, -1, p.shape[-1]).transpose(1, 2).reshape(p.shape)) for n, p in pieces]

    monkeypatch.setattr(writer, "hf_pieces", broken)
    from tstcli.errors import CheckpointError
    with pytest.raises(CheckpointError, match="self-test failed"):
        writer.export(run, None, tmp_path / "bad", "fp32", False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


@pytest.mark.slow
@pytest.mark.parametrize("arch,overrides", [
    ("qwen3_moe", {"model.moe_experts": 4, "model.moe_top_k": 2, "model.moe_ffn_dim": 32, "model.qk_norm": True,
                   "model.head_dim": 16, "model.tie_embeddings": False}),
    ("qwen3", {"model.qk_norm": True}),
])
def test_qwen3_exports_match_transformers_and_evaluate(small_data, tmp_path, arch, overrides):
    """A mixture-of-experts run exports as Qwen3MoeForCausalLM (per-expert matrices, the hub layout), a dense run
    with QK-norm as Qwen3ForCausalLM; transformers' logits match (the CLI's self-test, <= 1e-4 in fp32), and
    `tst eval` scores the export like the run directory."""
    from conftest import train_small
    from safetensors import safe_open
    _, run = train_small(small_data, tmp_path, **overrides)
    out = tmp_path / "export"
    r = run_cli("export", run, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["self_test_max_abs_diff"] is not None and res["self_test_max_abs_diff"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_norm.weight" in keys
    if arch == "qwen3_moe":
        assert config["num_experts"] == 4 and config["num_experts_per_tok"] == 2 and config["norm_topk_prob"]
        assert {f"model.layers.1.mlp.experts.{e}.{p}.weight" for e in range(4)
                for p in ("gate_proj", "up_proj", "down_proj")} <= keys and "model.layers.1.mlp.gate.weight" in keys
    if arch != "qwen3_moe":
        return  # dense evaluation of exports is covered in test_eval.py
    from conftest import MOBY
    a = json.loads(run_cli("eval", run, "--corpus", MOBY, "--json").stdout)["heldout"]
    b = json.loads(run_cli("eval", out, "--corpus", MOBY, "--json").stdout)["heldout"]
    assert a["rows"] == b["rows"] > 0 and a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_shared_expert_has_no_standard_form_to_export(small_data, tmp_path):
    from conftest import train_small
    _, run = train_small(small_data, tmp_path, **{"model.moe_experts": 2, "model.moe_top_k": 1,
                                                 "model.moe_shared_ffn_dim": 16, "train.steps": 2})
    r = run_cli("export", run, "--out", tmp_path / "x")
    assert r.returncode == 2 and "model.moe_shared_ffn_dim: Qwen3-MoE has no shared expert" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_model_card_and_push_to_hub_offline_is_one_line_exit_3(run, tmp_path):
    """The export carries a README model card (TST settings, tokens per phase, final held-out loss); pushing it
    offline fails with one line and exit 3, leaving the export complete (the upload itself is huggingface-hub's
    `upload_folder`, which cannot be exercised without a network)."""
    out = tmp_path / "hf"
    r = run_cli("export", run, "--out", out, "--push-to-hub", "someone/tiny-tst", "--private",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert_one_line_error(r, 3, "--push-to-hub someone/tiny-tst", "untouched")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    card = (out / "README.md").read_text()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    final = [x for x in rows if x["kind"] == "val"][-1]["val_loss"]
    phase1 = [x["tokens"] for x in rows if x["kind"] == "train" and x["phase"] == 1][-1]
    assert "bag size s = 3" in card and f"{final:.4f}" in card and f"{phase1:,} in phase 1" in card
    assert "[tst]" in card and "```toml" in card
    early = run_cli("export", run, "--out", tmp_path / "early", "--step", "2")  # the card describes that checkpoint
    assert early.returncode == 0, early.stderr
    state = json.loads((run / "checkpoints" / "step-00000002" / "state.json").read_text())
    card = (tmp_path / "early" / "README.md").read_text()
    assert "| steps | 2 of " in card and f"{state['tokens_phase']['1']:,} in phase 1" in card
    bad = run_cli("export", run, "--out", tmp_path / "x", "--push-to-hub", "no-slash")
    assert_one_line_error(bad, 2, "OWNER/NAME")
