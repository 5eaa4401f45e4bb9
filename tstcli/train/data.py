"""The data a training run reads: the memory-mapped shards, the recipe's pack (which rows each phase reads), and
the fixed held-out rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tstcli.data import packing, shards
from tstcli.data.loader import PhaseLoader, heldout_rows
from tstcli.errors import UsageError
from tstcli.phases import PhasePlan
from tstcli.recipe import Recipe


@dataclass
class TrainData:
    data_dir: Path
    manifest: dict
    manifest_sha: str
    pack: packing.Pack
    train: shards.TokenStore
    val: shards.TokenStore

    def loaders(self, plan: PhasePlan, seed: int) -> dict[int, PhaseLoader]:
        """Each phase's loader, reading rows of the plan's widths (which the pack was split for)."""
        return {p: PhaseLoader(self.train, self.pack.rows[p], spec.row_width, seed, p, plan.batch_size)
                for p, spec in plan.specs.items()}

    def mix_tokens(self, loaders: dict[int, PhaseLoader], phase: int, step_in_phase: int) -> dict[str, int]:
        """Raw tokens the step reads from each mixture entry ({} without a mixture)."""
        entries = self.pack.info.get("mix")
        if not entries:
            return {}
        starts = np.array([e["start"] for e in entries], dtype=np.int64)
        counts = loaders[phase].tokens_by_range(step_in_phase, starts)
        return {e["name"]: int(c) for e, c in zip(entries, counts)}

    def heldout_rows(self, r: Recipe) -> np.ndarray:
        """The rows every held-out evaluation of this run scores (the plan's `heldout_rows` rows of seq_len+1)."""
        rows = heldout_rows(self.val, r.plan, r.data.mix, self.manifest.get("mix"))
        if len(rows) == 0:
            raise UsageError(f"train.seq_len: the validation split ({self.val.total} tokens) holds no row of "
                             f"{r.plan.heldout.row_width} tokens; lower train.seq_len or raise data.val_fraction")
        return rows


def to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch on the training device. On a GPU the copy goes through pinned memory: from pageable memory CUDA may
    wait for the stream before copying, which would make the host wait for the previous step every step."""
    t = torch.from_numpy(rows)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def open_data(r: Recipe, data_dir: Path, full_verify: bool = False) -> tuple[TrainData, bool]:
    """Memory-map the prepared shards and the recipe's pack (built now if missing). Returns (data, pack_built)."""
    manifest = shards.read_manifest(data_dir)
    shards.verify(data_dir, manifest, full=full_verify)
    sha = shards.manifest_sha256(data_dir)
    pack, built = packing.ensure_pack(r.plan, r.run.seed, r.data, data_dir, manifest, sha)
    return TrainData(data_dir, manifest, sha, pack, shards.TokenStore(data_dir, manifest, "train"),
                     shards.TokenStore(data_dir, manifest, "val")), built
