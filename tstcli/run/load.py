"""`load_model(path, step)`: the model of a run directory (a native checkpoint) or of an export directory (a
Hugging Face Llama / Qwen3 / Qwen3-MoE checkpoint written by `tst export`, or a compatible one), with its tokenizer.
`tst eval` and `tst export` load through here, and so does anything else that needs a trained model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from tokenizers import Tokenizer

from tstcli import recipe as recipes
from tstcli.errors import CheckpointError, DataError
from tstcli.model import Llama
from tstcli.recipe import Recipe
from tstcli.run import checkpoint, rundir
from tstcli.run.integrity import check_finite, verify_files


@dataclass
class LoadedModel:
    model: Llama  # in eval mode, fp32, on the CPU
    tokenizer: Tokenizer
    tokenizer_path: Path
    eot_id: int
    max_len: int  # longest context (RoPE positions)
    source: str  # the checkpoint or export directory it came from
    run_dir: Path | None = None  # set for run directories
    recipe: Recipe | None = None  # the run's recipe (run directories only)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


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


def from_run(run_dir: Path, step: int | None) -> LoadedModel:
    rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    manifest = read_manifest_copy(run_dir)
    ckpt = checkpoint.find(run_dir / rundir.CHECKPOINTS, step)
    model = Llama(r.model, manifest["vocab_size"])
    checkpoint.load_weights(ckpt, model)
    tok = run_dir / rundir.TOKENIZER
    return LoadedModel(model.eval(), _tokenizer(tok), tok, manifest["tokenizer"]["eot_id"], r.model.max_seq_len,
                       str(ckpt), run_dir, r)


def from_export(export_dir: Path) -> LoadedModel:
    from tstcli.model.hf import model_config, native_state_dict

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
    hf = {}
    try:
        for f in files:
            hf.update(load_file(str(export_dir / f)))
    except Exception as e:
        raise CheckpointError(f"{export_dir}: cannot load weights ({type(e).__name__}: {e})".splitlines()[0]) from None
    check_finite(hf.items(), export_dir)
    model = Llama(cfg, vocab)
    try:
        model.load_state_dict({k: v.float() for k, v in native_state_dict(hf, cfg.tie_embeddings).items()})
    except RuntimeError as e:
        raise CheckpointError(f"{export_dir}: weights do not match config.json ({e})".splitlines()[0]) from None
    tok = export_dir / "tokenizer.json"
    return LoadedModel(model.eval(), _tokenizer(tok), tok, eot, cfg.max_seq_len, str(export_dir))


def load_model(path: Path, step: int | None = None) -> LoadedModel:
    """A run directory's checkpoint of `step` (default: the latest complete one) or an export directory."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if (path / rundir.RUN_INFO).is_file():
        return from_run(path, step)
    if step is not None:
        raise CheckpointError(f"{path}: --step applies to run directories; this is an export directory")
    return from_export(path)
