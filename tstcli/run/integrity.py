"""Integrity of what a run wrote: sha256 of each file (recorded when written, checked when read) and weights that
hold no NaN or infinity. Checkpoints record theirs in `state.json`, exports in `tst_export.json`."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tstcli.errors import CheckpointError
from tstcli.files import file_sha256, plain_name


def checksums(directory: Path, files: list[str]) -> dict[str, str]:
    """{file: sha256}, files hashed in parallel (hashlib releases the GIL: disk speed, see benchmarks/RESULTS.md)."""
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
        return dict(zip(files, pool.map(lambda f: file_sha256(directory / f), files)))


def verify_files(path: Path, recorded: dict[str, str]) -> None:
    """Every file's sha256 equals the one recorded when it was written (exit 4 naming the first that does not)."""
    outside = [name for name in recorded if not plain_name(name)]
    if outside:
        raise CheckpointError(f"{path}: the recorded checksums name {outside[0]!r}, not a file of this folder")
    try:
        found = checksums(path, sorted(recorded))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {e.filename or 'a checkpoint file'} ({e.strerror})") from None
    for name in sorted(recorded):
        if found[name] != recorded[name]:
            raise CheckpointError(f"{path / name}: sha256 differs from the one recorded when it was written (the file "
                                  "is damaged); restore it, or delete this checkpoint to use an earlier one")


def check_finite(named_tensors, where: Path) -> None:
    """Refuse weights holding NaN or infinity (a flipped exponent bit, a diverged save)."""
    for name, t in named_tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        # abs().amax() is NaN or infinite exactly when an element is, at half of isfinite().all()'s cost
        if local.is_floating_point() and local.numel() and not bool(torch.isfinite(local.abs().amax())):
            raise CheckpointError(f"{where}: weight {name} holds non-finite values (NaN or infinity); the checkpoint "
                                  "is damaged or was saved after divergence")


