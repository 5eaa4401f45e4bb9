"""`tst export`: write a model as a standard Hugging Face checkpoint (weights, config, tokenizer files), self-test
it against the native model, and only then rename it into place. The name/config mapping is `tstcli.model.hf`."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file

from tstcli.errors import CheckpointError, RecipeError
from tstcli.export.card import model_card
from tstcli.model import Llama
from tstcli.model.hf import hf_config, hf_state_dict
from tstcli.run.load import LoadedModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAX_SHARD = "5GB"
SELF_TEST_TOLERANCE = 1e-4


def _tokenizer_files(tokenizer: Path, out: Path, eot_token: str, max_len: int) -> None:
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    special = {"bos_token": eot_token, "eos_token": eot_token, "unk_token": eot_token}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")


def _write_weights(state: dict[str, torch.Tensor], out: Path) -> None:
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=MAX_SHARD)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")


def self_test(out: Path, model: Llama, dtype: torch.dtype) -> float | None:
    """Max |logits difference| between the export loaded by transformers and the native model (both fp32, on the
    export's rounded weights); None when transformers is not installed."""
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    hf.eval()
    native = Llama(model.cfg, model.vocab_size)
    native.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    native.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.vocab_size, (2, min(64, model.cfg.max_seq_len)), generator=g)
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits.float()
        ours = native.logits(native(input_ids=ids)).float()
    return (theirs - ours).abs().max().item()


def export(lm: LoadedModel, out: Path, dtype_name: str, force: bool) -> dict:
    """Write the export to a temporary directory, self-test it, then rename it to `out`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RecipeError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    dtype, model, eot = DTYPES[dtype_name], lm.model, lm.eot_id
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_weights(hf_state_dict(model, dtype), tmp)
        config = hf_config(model.cfg, model.vocab_size, eot, dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "do_sample": True,
               "temperature": 1.0, "top_p": 1.0, "max_length": lm.max_len}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1) + "\n")
        _tokenizer_files(lm.tokenizer_path, tmp, lm.tokenizer.id_to_token(eot), lm.max_len)
        (tmp / "README.md").write_text(model_card(lm, config["architectures"][0]))
        diff = self_test(tmp, model, dtype)
        if diff is not None and diff > SELF_TEST_TOLERANCE:
            raise CheckpointError(f"--out {out}: self-test failed: transformers' logits differ from the native "
                                  f"model's by {diff:.3g} (> {SELF_TEST_TOLERANCE}); the export was not written")
        (tmp / "tst_export.json").write_text(json.dumps({"source": lm.source, "dtype": dtype_name,
                                                         "self_test_max_abs_diff": diff}, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    return {"out": str(out), "source": lm.source, "dtype": dtype_name, "self_test_max_abs_diff": diff,
            "files": sorted(p.name for p in out.iterdir())}
