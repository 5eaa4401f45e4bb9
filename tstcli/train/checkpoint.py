"""Checkpoints: `checkpoints/step-NNNNNNNN/` holding model and optimizer tensors (safetensors), the training
state (JSON) and the recipe. Written under a temporary name, fsynced, then renamed into place: a directory named
`step-*` is complete by construction, and `state.json` (written last) is checked too. Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from tstcli.errors import CheckpointError

STEP_DIR = re.compile(r"^step-(\d{8})$")
FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for k, v in tensors.items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * n + (1 << 20)  # weights + two Adam moments + metadata


def save(root: Path, step: int, model, optimizer, state: dict, recipe_toml: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    need = checkpoint_bytes(model, optimizer)
    free = shutil.disk_usage(root).free
    if free < need:
        raise CheckpointError(f"{root}: {free / 2**20:.0f} MiB free, a checkpoint needs about "
                              f"{need / 2**20:.0f} MiB; free space and run `tst resume`")
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    tensors, meta = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"meta": json.dumps(meta)})
    (tmp / "recipe.toml").write_text(recipe_toml)
    (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    return final


def complete(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if STEP_DIR.match(p.name) and all((p / f).is_file() for f in FILES)]
    return sorted(out, key=lambda p: p.name)


def latest(root: Path) -> Path | None:
    found = complete(root)
    return found[-1] if found else None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints and any leftover temporary directories."""
    found = complete(root)
    if keep > 0:
        for p in found[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


def load(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer in place; return the training state."""
    try:
        state = json.loads((path / "state.json").read_text())
        load_model(model, str(path / "model.safetensors"), strict=True)
        with safe_open(str(path / "optimizer.safetensors"), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
        load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), meta)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from None
    return state


def find(root: Path, step: int | None) -> Path:
    """The complete checkpoint of `step`, or the latest one when `step` is None."""
    found = complete(root)
    if not found:
        raise CheckpointError(f"{root}: no complete checkpoint")
    if step is None:
        return found[-1]
    for p in found:
        if int(STEP_DIR.match(p.name).group(1)) == step:
            return p
    steps = ", ".join(str(int(STEP_DIR.match(p.name).group(1))) for p in found)
    raise CheckpointError(f"{root}: no complete checkpoint of step {step} (have: {steps})")


def load_weights(path: Path, model) -> None:
    """Model weights only (export, evaluation)."""
    try:
        load_model(model, str(path / "model.safetensors"), strict=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot load model weights ({type(e).__name__}: {e})".splitlines()[0]) from None
