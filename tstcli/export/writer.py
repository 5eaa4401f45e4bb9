"""`tst export`: write a model as a standard Hugging Face checkpoint (weights, config, tokenizer files), self-test
it against the native model, and only then rename it into place. The name/config mapping is `tstcli.model.hf`."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import save_file

from tstcli.errors import CheckpointError, UsageError, as_error, environment_fault
from tstcli.export.card import model_card
from tstcli.model import Llama
from tstcli.model.hf import hf_config, hf_state_dict
from tstcli.run.integrity import checksums
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


def _save_file(tensors: dict, path: Path) -> None:
    """safetensors' save_file, its I/O errors (a Rust error carrying "os error N") raised as the OSError they are."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _write_weights(state: dict[str, torch.Tensor], out: Path) -> None:
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=MAX_SHARD)
    for filename, names in split.filename_to_tensors.items():
        _save_file({n: state[n] for n in names}, out / filename)
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


def refuse_overlap(out: Path, run_dir: Path | None) -> None:
    """--out must neither be, nor lie inside, nor contain the run directory (--force would delete the run)."""
    if run_dir is None:
        return
    o, r = out.resolve(), run_dir.resolve()
    if o == r or r in o.parents or o in r.parents:
        where = "is" if o == r else "lies inside" if r in o.parents else "contains"
        raise UsageError(f"--out {out}: {where} the run directory {run_dir}; export somewhere else")


def _weight_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.safetensors"))


def _make_readable(directory: Path) -> None:
    """Every file as an ordinary file would be (0666 less the umask): safetensors' temporary files are 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for p in directory.iterdir():
        os.chmod(p, 0o666 & ~umask)


def export(lm: LoadedModel, out: Path, dtype_name: str, force: bool) -> dict:
    """Write the export to a temporary directory, self-test it, then rename it to `out`."""
    refuse_overlap(out, lm.run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UsageError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    dtype = DTYPES[dtype_name]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        diff = _write(lm, tmp, out, dtype, dtype_name)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and environment_fault(e) is not None:
            raise as_error(e, CheckpointError, f"writing the export to {out}", path=tmp) from None
        raise
    return {"out": str(out), "source": lm.source, "dtype": dtype_name, "self_test_max_abs_diff": diff,
            "files": sorted(p.name for p in out.iterdir())}


def _write(lm: LoadedModel, tmp: Path, out: Path, dtype: torch.dtype, dtype_name: str) -> float | None:
    """Every file of the export into `tmp`, self-tested; returns the self-test's max |diff|."""
    model, eot = lm.model, lm.eot_id
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
                                                     "self_test_max_abs_diff": diff,
                                                     "sha256": checksums(tmp, _weight_files(tmp))},
                                                    indent=1) + "\n")
    _make_readable(tmp)
    return diff
