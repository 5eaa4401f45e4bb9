"""Load the model to evaluate from a run directory (native checkpoint) or an export directory (Hugging Face
Llama checkpoint written by `tst export`, or any compatible one)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from tstcli import recipe as recipes
from tstcli.errors import CheckpointError, DataError
from tstcli.model import Llama


@dataclass
class EvalModel:
    model: Llama
    tokenizer: Tokenizer
    eot_id: int
    max_len: int
    source: str
    run_dir: Path | None  # set for run directories (held-out loss needs the run's validation split)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def _tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot load tokenizer ({e})".splitlines()[0]) from None


def from_run(run_dir: Path, step: int | None) -> EvalModel:
    from tstcli.train import checkpoint, rundir

    rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{run_dir / 'manifest.json'}: missing or corrupt") from None
    ckpt = checkpoint.find(run_dir / rundir.CHECKPOINTS, step)
    model = Llama(r.model, manifest["vocab_size"])
    checkpoint.load_weights(ckpt, model)
    return EvalModel(model.eval(), _tokenizer(run_dir / "tokenizer.json"), manifest["tokenizer"]["eot_id"],
                     r.model.max_seq_len, str(ckpt), run_dir)


def from_export(export_dir: Path) -> EvalModel:
    from tstcli.export.hf import model_config, native_state_dict

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
    hf = {}
    try:
        for f in files:
            hf.update(load_file(str(export_dir / f)))
    except Exception as e:
        raise CheckpointError(f"{export_dir}: cannot load weights ({type(e).__name__}: {e})".splitlines()[0]) from None
    model = Llama(cfg, vocab)
    try:
        model.load_state_dict({k: v.float() for k, v in native_state_dict(hf, cfg.tie_embeddings).items()})
    except RuntimeError as e:
        raise CheckpointError(f"{export_dir}: weights do not match config.json ({e})".splitlines()[0]) from None
    return EvalModel(model.eval(), _tokenizer(export_dir / "tokenizer.json"), eot, cfg.max_seq_len,
                     str(export_dir), None)


def load(path: Path, step: int | None) -> EvalModel:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if (path / "run.json").is_file():
        return from_run(path, step)
    return from_export(path)


@torch.no_grad()
def heldout_loss(em: EvalModel, batch_size: int, max_rows: int = 256) -> dict:
    """Ordinary next-token loss on the run's validation split (rows of seq_len+1 tokens)."""
    from tstcli.data import shards
    from tstcli.data.loader import val_rows
    from tstcli.train import rundir
    from tstcli.train.objective import next_token_loss

    info = rundir.read_info(em.run_dir)
    r = recipes.load(em.run_dir / rundir.RECIPE)
    data_dir = Path(info["data_dir"])
    manifest = shards.read_manifest(data_dir)
    shards.verify(data_dir, manifest, full=False)
    L = r.train.seq_len
    rows = torch.from_numpy(val_rows(shards.TokenStore(data_dir, manifest, "val"), L + 1, max_rows))
    return {"val_loss": next_token_loss(em.model, rows, batch_size), "rows": len(rows), "tokens": len(rows) * L}


@torch.no_grad()
def corpus_loss(em: EvalModel, corpus: Path, batch_size: int, max_rows: int = 256) -> dict:
    """Ordinary next-token loss on a given corpus (any `tst prepare` source), documents joined by the end-of-text
    token and cut into rows of the model's context + 1 (how held-out loss is measured for an export)."""
    from tstcli.data import sources
    from tstcli.train.objective import next_token_loss

    L = min(em.max_len, 1024)
    width, need = L + 1, max_rows * (L + 1)
    stream: list[int] = []
    for f in sources.resolve([str(corpus)]):
        for doc in sources.iter_documents(f, "text", "blank_line"):
            stream += em.encode(doc) + [em.eot_id]
            if len(stream) >= need:
                break
        if len(stream) >= need:
            break
    n = min(len(stream) // width, max_rows)
    if n == 0:
        raise DataError(f"--corpus {corpus}: fewer than {width} tokens, not one row of the model's context")
    rows = torch.tensor(stream[: n * width], dtype=torch.long).view(n, width)
    return {"val_loss": next_token_loss(em.model, rows, batch_size), "rows": n, "tokens": n * L, "corpus": str(corpus)}
