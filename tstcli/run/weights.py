"""A checkpoint's model weights a few tensors at a time (`tst export`): never the whole model in memory.

DCP loads exactly the entries of the state dict it is given, so each call asks for one group of tensors of at
most `budget` bytes (fp32, resharded from however many ranks saved it) and the caller drops them before the next."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader

from tstcli.errors import CheckpointError
from tstcli.model import Llama
from tstcli.run import checkpoint
from tstcli.run.integrity import check_finite, verify_files

BUDGET = 64 << 20  # bytes of fp32 tensors read per group (and as much again of the mapped checkpoint file)


def stored_shapes(model: Llama) -> dict[str, torch.Size]:
    """Name -> shape of what a checkpoint holds of `model` (a meta-device model will do): its state dict without
    the head when the head is the embedding (a checkpoint stores a tied tensor once, under its first name)."""
    tied = model.cfg.tie_embeddings
    return {n: t.shape for n, t in model.state_dict(keep_vars=True).items() if not (tied and n == "output.weight")}


def _groups(shapes: dict[str, torch.Size], names: list[str], budget: int) -> Iterator[list[str]]:
    group, size = [], 0
    for n in names:
        nbytes = 4 * shapes[n].numel()
        if group and size + nbytes > budget:
            yield group
            group, size = [], 0
        group.append(n)
        size += nbytes
    if group:
        yield group


def iter_weights(path: Path, shapes: dict[str, torch.Size], names: list[str],
                 budget: int = BUDGET) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, fp32 tensor) for each of `names` from the checkpoint at `path`, in that order, checked finite."""
    verify_files(path, checkpoint.read_state(path).get("sha256", {}))
    reader_errors = checkpoint.LOAD_ERRORS
    for group in _groups(shapes, names, budget):
        tensors = {n: torch.empty(shapes[n], dtype=torch.float32) for n in group}
        try:
            with checkpoint.quiet_dcp():
                dcp.load({"model": tensors}, storage_reader=HuggingFaceStorageReader(str(path)))
        except reader_errors as e:
            raise CheckpointError(f"{path}: cannot load model weights ({checkpoint.reason(e)})") from None
        check_finite(tensors.items(), path)
        for n in group:
            yield n, tensors.pop(n)
