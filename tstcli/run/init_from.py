"""`model.init_from`: start a run from an existing checkpoint — a Hugging Face Llama / Qwen3 / Qwen3-MoE directory
(safetensors, sharded or not), a `tst` run or export directory, or a hub repo id — instead of random weights.

`check` runs once, before the run directory exists: the checkpoint's shape must be the recipe's (the first
difference is one line, exit 2), its vocabulary and tokenizer the prepared data's (exit 3). It returns the record the
run directory keeps (`init_from.json`: source, local path, hub revision, sha256 of each weight file). `weights` is
what every rank loads into its model before the first step.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from tstcli.errors import DataError, UsageError
from tstcli.files import file_sha256
from tstcli.recipe import ModelConfig
from tstcli.run.load import LoadedModel, load_model

INIT_FROM = "init_from.json"

# recipe key -> the model property that must agree (derived sizes, so 0 = "by rule" compares as its value)
SHAPE = {"model.dim": "dim", "model.n_layers": "n_layers", "model.n_heads": "n_heads", "model.n_kv_heads": "kv_heads",
         "model.head_dim": "head_size", "model.ffn_dim": "intermediate", "model.tie_embeddings": "tie_embeddings",
         "model.qk_norm": "qk_norm", "model.moe_experts": "moe_experts", "model.rope_theta": "rope_theta",
         "model.norm_eps": "norm_eps"}
MOE_SHAPE = {"model.moe_top_k": "moe_top_k", "model.moe_ffn_dim": "expert_intermediate",
             "model.moe_norm_topk": "moe_norm_topk", "model.moe_shared_ffn_dim": "moe_shared_ffn_dim"}


def locate(source: str) -> tuple[Path, str | None]:
    """(local directory, hub revision or None): a local path as it is, else a hub repo id from the hub (or its cache
    when offline: HF_HUB_OFFLINE=1)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, None
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise DataError(f"model.init_from {source!r}: no such directory (and not a hub repo id OWNER/NAME)")
    from huggingface_hub import snapshot_download

    from tstcli.prep import hub

    hub.quiet()
    offline = not hub.reachable()
    try:
        local = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"],
                                       local_files_only=offline))
    except Exception as e:  # offline and not cached, no such repo, no access, network down: all one line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"model.init_from {source!r}: cannot get it from the Hugging Face hub "
                        f"({'offline and not in the local cache' if offline else reason})") from None
    return local, local.name


def _first_difference(ours: ModelConfig, theirs: ModelConfig) -> str | None:
    keys = SHAPE | (MOE_SHAPE if ours.moe_experts and theirs.moe_experts else {})
    for key, attr in keys.items():
        a, b = getattr(ours, attr), getattr(theirs, attr)
        if a != b:
            return f"{key} is {a!r} in the recipe but {b!r} in the checkpoint"
    return None


def _weight_files(lm: LoadedModel) -> list[Path]:
    src = Path(lm.source)
    return sorted(src.glob("*.safetensors")) if src.is_dir() else []


def check(source: str, model_cfg: ModelConfig, vocab_size: int, tokenizer_path: Path) -> dict:
    """Refuse a checkpoint the run cannot start from; the record of where it starts."""
    path, revision = locate(source)
    lm = load_model(path)
    where = f"model.init_from {source!r}"
    diff = _first_difference(model_cfg, lm.model.cfg)
    if diff:
        raise UsageError(f"{where}: {diff} (set the recipe's model shape to the checkpoint's)")
    if lm.model.vocab_size != vocab_size:
        raise DataError(f"{where}: vocabulary of {lm.model.vocab_size:,} tokens, the prepared data's has "
                        f"{vocab_size:,} (prepare the data with the checkpoint's tokenizer: data.tokenizer)")
    if Tokenizer.from_file(str(tokenizer_path)).get_vocab() != lm.tokenizer.get_vocab():
        raise DataError(f"{where}: its tokenizer ({lm.tokenizer_path}) is not the one the data was prepared with "
                        f"({tokenizer_path}); set data.tokenizer to the checkpoint's tokenizer.json")
    return {"source": source, "path": str(path.resolve()), "revision": revision, "checkpoint": lm.source,
            "sha256": {f.name: file_sha256(f) for f in _weight_files(lm)}}


def weights(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's weights by native parameter name (fp32, CPU) and where they came from."""
    path, _ = locate(source)
    lm = load_model(path)
    return lm.model.state_dict(), lm.source
