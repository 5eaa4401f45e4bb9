"""`load_model(path, step)`: the model of a run directory (a native checkpoint) or of an export directory (a
Hugging Face Llama / Qwen3 / Qwen3-MoE checkpoint written by `tst export`, or a compatible one), with its tokenizer.
`tst eval` and `tst export` load through here, and so does anything else that needs a trained model.

The model is built on the meta device and given storage on its target device in its target dtype (`Placement`);
the weights are then read into it tensor by tensor — a run's checkpoint through DCP, an export's safetensors files
with plain reads (`safetensors_stream`: no memory-mapped file) — so host memory holds the model once."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from tstcli import recipe as recipes
from tstcli.errors import CheckpointError, DataError
from tstcli.model import Llama
from tstcli.recipe import Recipe
from tstcli.run import pins, rundir
from tstcli.run.integrity import check_finite, verify_files
from tstcli.run.placement import CPU_FP32, Placement
from tstcli.run.safetensors_stream import read_tensors


@dataclass
class LoadedModel:
    model: Llama  # in eval mode, on the device and in the dtype it was loaded for
    tokenizer: Tokenizer
    tokenizer_path: Path
    eot_id: int
    max_len: int  # longest context (RoPE positions)
    source: str  # the checkpoint or export directory it came from
    run_dir: Path | None = None  # set for run directories
    recipe: Recipe | None = None  # the run's recipe (run directories only)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return encode_many(self.tokenizer, texts)


def encode_many(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, as `encode` gives them, in one batch (the tokenizer's own threads)."""
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def _tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot load tokenizer ({e})".splitlines()[0]) from None


def read_manifest_copy(run_dir: Path) -> dict:
    """The run's copy of its data manifest (vocabulary size, end-of-text token)."""
    path = run_dir / rundir.MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{path}: missing or corrupt (not a complete run directory)") from None


def meta_model(cfg, vocab_size: int, dtype: torch.dtype = torch.float32) -> Llama:
    """The model's structure without storage (the meta device), its parameters in `dtype`."""
    previous, normal_ = torch.get_default_dtype(), torch.nn.init.normal_
    torch.set_default_dtype(dtype)
    # nn.Embedding initialises itself with normal_, which on the meta device runs a reference implementation that
    # imports torch._dynamo (~0.5 s of every `tst eval`); meta tensors hold no values to initialise (as transformers'
    # no_init_weights does).
    torch.nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        with torch.device("meta"):
            return Llama(cfg, vocab_size)
    finally:
        torch.set_default_dtype(previous)
        torch.nn.init.normal_ = normal_


def empty_model(cfg, vocab_size: int, placement: Placement) -> Llama:
    """The model with uninitialised weights on `placement`: storage allocated once, where and as it will be used."""
    return meta_model(cfg, vocab_size, placement.dtype).materialize(placement.device, placement.dtype)


@dataclass(frozen=True)
class RunInfo:
    """What a run directory says about its model, besides the weights: `tst export` streams those itself."""
    run_dir: Path
    recipe: Recipe
    vocab_size: int
    eot_id: int
    tokenizer_path: Path

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / rundir.CHECKPOINTS


def read_run(run_dir: Path) -> RunInfo:
    rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    manifest = read_manifest_copy(run_dir)
    return RunInfo(run_dir, r, manifest["vocab_size"], manifest["tokenizer"]["eot_id"], run_dir / rundir.TOKENIZER)


def from_run(run_dir: Path, step: int | None, placement: Placement = CPU_FP32) -> LoadedModel:
    from tstcli.run import checkpoint  # torch.distributed.checkpoint takes ~0.6 s to import: not for an export

    run = read_run(run_dir)
    model = empty_model(run.recipe.model, run.vocab_size, placement)
    with pins.reading(lambda: checkpoint.find(run.checkpoints, step)) as ckpt:  # training may prune it meanwhile
        checkpoint.load_weights(ckpt, model)
    return LoadedModel(model.eval(), _tokenizer(run.tokenizer_path), run.tokenizer_path, run.eot_id,
                       run.recipe.model.max_seq_len, str(ckpt), run_dir, run.recipe)


def from_export(export_dir: Path, placement: Placement = CPU_FP32) -> LoadedModel:
    from tstcli.model.hf import model_config

    cfg_path = export_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{export_dir}: no config.json (neither a run directory nor an export directory)")
    try:
        c = json.loads(cfg_path.read_text())
        cfg = model_config(c)
        vocab = c["vocab_size"]
        eos = c.get("eos_token_id")
        eot = eos[0] if isinstance(eos, list) else eos
    except CheckpointError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: not a supported config ({type(e).__name__}: {e})") from None
    index = export_dir / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    meta = export_dir / "tst_export.json"  # written by `tst export`: the weight files' sha256
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text()).get("sha256", {})
        except (OSError, ValueError, AttributeError):
            raise CheckpointError(f"{meta}: corrupt export metadata (expected JSON)") from None
        verify_files(export_dir, recorded)
    model = empty_model(cfg, vocab, placement)
    _read_export_weights(export_dir, files, model)
    tok = export_dir / "tokenizer.json"
    return LoadedModel(model.eval(), _tokenizer(tok), tok, eot, cfg.max_seq_len, str(export_dir))


def _read_export_weights(export_dir: Path, files: list[str], model: Llama) -> None:
    """Every tensor of the export's safetensors files copied into its place in `model` (converted to the model's
    device and dtype on the way), one tensor in memory at a time; every parameter must be written exactly once."""
    from tstcli.model.hf import native_target

    params = dict(model.named_parameters(remove_duplicate=False))
    tied = model.cfg.tie_embeddings
    written: set[tuple[str, int | None]] = set()
    try:
        for f in files:
            for name, t in read_tensors(export_dir / f):
                target = native_target(name)
                if target is None or (tied and target[0] == "output.weight"):
                    continue
                if target[0] not in params:
                    raise CheckpointError(f"{export_dir}: {name} has no place in the model config.json "
                                          "describes (weights do not match config.json)")
                check_finite([(name, t)], export_dir / f)
                dest = params[target[0]] if target[1] is None else params[target[0]][target[1]]
                src = t if target[1] is None else t.t()
                if dest.shape != src.shape:
                    raise CheckpointError(f"{export_dir}: weights do not match config.json ({name}: shape "
                                          f"{tuple(src.shape)}, the model expects {tuple(dest.shape)})")
                with torch.no_grad():
                    dest.copy_(src)
                written.add(target)
                del t, src
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{export_dir}: cannot load weights ({type(e).__name__}: {e})".splitlines()[0]) from None
    _check_all_written(export_dir, model, written)


def _check_all_written(export_dir: Path, model: Llama, written: set[tuple[str, int | None]]) -> None:
    """A missing tensor would leave uninitialised memory in the model: refuse instead."""
    for name, p in model.named_parameters():
        experts = {e for n, e in written if n == name and e is not None}
        if (name, None) not in written and len(experts) != (p.shape[0] if experts else -1):
            raise CheckpointError(f"{export_dir}: weights do not match config.json (no tensor for {name})")


def load_model(path: Path, step: int | None = None, placement: Placement = CPU_FP32) -> LoadedModel:
    """A run directory's checkpoint of `step` (default: the latest complete one) or an export directory, on
    `placement` (default: the CPU in fp32)."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if (path / rundir.RUN_INFO).is_file():
        return from_run(path, step, placement)
    if step is not None:
        raise CheckpointError(f"{path}: --step applies to run directories; this is an export directory")
    return from_export(path, placement)
