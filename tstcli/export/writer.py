"""`tst export`: write a run's checkpoint as a standard Hugging Face checkpoint (weights, config, tokenizer files),
self-test it, and only then rename it into place. The name/config mapping is `tstcli.model.hf`.

Memory stays bounded by the export itself: the weights stream from the checkpoint a group of tensors at a time into
one safetensors shard at a time (`run/weights.py`); the self-test holds one model at a time — transformers' model of
the export, then the native model loaded from the export — and compares the native weights with the checkpoint's
(again streamed) and the two models' logits. The checkpoint is pinned against pruning while it is read."""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import save_file
from tokenizers import Tokenizer

from tstcli.errors import CheckpointError, UsageError, as_error, environment_fault
from tstcli.export.card import model_card
from tstcli.model import Llama
from tstcli.model.hf import architecture, export_order, hf_config, hf_pieces
from tstcli.run import checkpoint, pins
from tstcli.run.integrity import checksums
from tstcli.run.load import RunInfo, from_export, meta_model, read_run
from tstcli.run.safetensors_stream import read_tensors
from tstcli.run.weights import iter_weights, stored_shapes

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


def _write_weights(ckpt: Path, meta: Llama, dtype: torch.dtype, out: Path) -> None:
    """The checkpoint's weights under transformers' names in `dtype`, in shards of at most MAX_SHARD, each shard
    filled from the checkpoint a group of tensors at a time and written before the next is read."""
    shapes = stored_shapes(meta)
    sources, plan = {}, {}  # transformers name -> native name; -> a meta tensor of its size, for the shard plan
    for name in export_order(list(shapes)):
        for hf_name, t in hf_pieces(name, torch.empty(shapes[name], device="meta"), meta.cfg):
            sources[hf_name], plan[hf_name] = name, t.to(dtype)
    split = split_torch_state_dict_into_shards(plan, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=MAX_SHARD)
    for filename, names in split.filename_to_tensors.items():
        wanted, shard = set(names), {}
        for name, t in iter_weights(ckpt, shapes, list(dict.fromkeys(sources[n] for n in names))):
            for hf_name, piece in hf_pieces(name, t, meta.cfg):
                if hf_name in wanted:
                    shard[hf_name] = piece.to(dtype).contiguous()
        _save_file(shard, out / filename)
        del shard
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")


def _transformers_logits(out: Path, ids: torch.Tensor) -> torch.Tensor | None:
    """transformers' fp32 logits of the export on `ids` (its model freed before returning); None without it.
    The model class and config come from the export's config.json; its weights are the export's files read in
    fp32 with plain reads and handed over as the state dict, which transformers adopts without a copy (loading the
    directory would hold the memory-mapped files and an fp32 copy at once)."""
    # transformers imports torchao when it is installed: torchao logs the GPU kernels it cannot load on this
    # machine and its Enum registrations make torch log deprecations — none of it the user's concern. Quiet
    # for this call only.
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        return _logits_of(out, ids)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _logits_of(out: Path, ids: torch.Tensor) -> torch.Tensor | None:
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(str(out))
    state = {name: t.float() for f in _weight_files(out) for name, t in read_tensors(out / f)}
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    hf = model_class.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32)
    del state
    hf.eval()
    with torch.no_grad():
        logits = hf(input_ids=ids).logits.float()
    del hf
    gc.collect()
    return logits


def self_test(out: Path, ckpt: Path, meta: Llama, dtype: torch.dtype) -> float | None:
    """Loads the export back with the native loader (`tst eval`'s) and checks that every weight equals the
    checkpoint's rounded to `dtype` — bit for bit — and that transformers' logits match the native model's (both
    fp32). Returns the max |logits difference|, None when transformers is not installed (the weights are still
    checked). One model in memory at a time."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, meta.vocab_size, (2, min(64, meta.cfg.max_seq_len)), generator=g)
    theirs = _transformers_logits(out, ids)
    native = from_export(out).model
    params = dict(native.named_parameters(remove_duplicate=False))
    shapes = stored_shapes(meta)
    for name, t in iter_weights(ckpt, shapes, list(shapes)):
        if not torch.equal(params[name], t.to(dtype).float()):
            raise CheckpointError(f"--out {out}: self-test failed: {name} read back from the export differs from "
                                  "the checkpoint's; the export was not written")
    if theirs is None:
        return None
    with torch.no_grad():
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


def export(run_dir: Path, step: int | None, out: Path, dtype_name: str, force: bool) -> dict:
    """Export the checkpoint of `step` (default: the latest) of a run: written to a temporary directory,
    self-tested, then renamed to `out`."""
    refuse_overlap(out, run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UsageError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    run = read_run(run_dir)
    architecture(run.recipe.model)  # a model with no Hugging Face form: refused before anything is read
    dtype = DTYPES[dtype_name]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with pins.reading(lambda: checkpoint.find(run.checkpoints, step)) as ckpt:  # training may prune it meanwhile
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            diff = _write(run, ckpt, tmp, out, dtype, dtype_name)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            tmp.rename(out)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and environment_fault(e) is not None:
                raise as_error(e, CheckpointError, f"writing the export to {out}", path=tmp) from None
            raise
    return {"out": str(out), "source": str(ckpt), "dtype": dtype_name, "self_test_max_abs_diff": diff,
            "files": sorted(p.name for p in out.iterdir())}


def _write(run: RunInfo, ckpt: Path, tmp: Path, out: Path, dtype: torch.dtype, dtype_name: str) -> float | None:
    """Every file of the export into `tmp`, self-tested; returns the self-test's max |diff|."""
    cfg, eot = run.recipe.model, run.eot_id
    meta = meta_model(cfg, run.vocab_size)
    _write_weights(ckpt, meta, dtype, tmp)
    config = hf_config(cfg, run.vocab_size, eot, dtype)
    (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "do_sample": True,
           "temperature": 1.0, "top_p": 1.0, "max_length": cfg.max_seq_len}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1) + "\n")
    tokenizer = Tokenizer.from_file(str(run.tokenizer_path))
    _tokenizer_files(run.tokenizer_path, tmp, tokenizer.id_to_token(eot), cfg.max_seq_len)
    (tmp / "README.md").write_text(model_card(run, ckpt, config["architectures"][0]))
    diff = self_test(tmp, ckpt, meta, dtype)
    if diff is not None and diff > SELF_TEST_TOLERANCE:
        raise CheckpointError(f"--out {out}: self-test failed: transformers' logits differ from the native "
                              f"model's by {diff:.3g} (> {SELF_TEST_TOLERANCE}); the export was not written")
    (tmp / "tst_export.json").write_text(json.dumps({"source": str(ckpt), "dtype": dtype_name,
                                                     "self_test_max_abs_diff": diff,
                                                     "sha256": checksums(tmp, _weight_files(tmp))},
                                                    indent=1) + "\n")
    _make_readable(tmp)
    return diff
