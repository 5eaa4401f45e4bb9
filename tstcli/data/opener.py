"""A run's data opened, one way for training and `tst eval`: the manifest read and its shards verified, both splits
memory-mapped (`open_prepared`), with the recipe's pack on top for training (`open_data`), and the held-out rows
every evaluation of the run scores (`PreparedData.heldout_batch`), so `tst eval` scores exactly the rows training
validated on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tstcli.data import packing, shards
from tstcli.data.loader import PhaseLoader, heldout_share, select_heldout_rows
from tstcli.errors import UsageError
from tstcli.phases import PhasePlan
from tstcli.recipe import Recipe


@dataclass
class PreparedData:
    """A data directory's prepared shards, verified and memory-mapped (no pack: what `tst eval` needs)."""
    data_dir: Path
    manifest: dict
    manifest_sha: str
    train: shards.TokenStore
    val: shards.TokenStore

    def heldout_batch(self, r: Recipe) -> np.ndarray:
        """The rows every held-out evaluation of this run scores (the plan's `heldout_count` rows of seq_len+1)."""
        rows = select_heldout_rows(self.val, r.plan, r.data.mix, self.manifest.get("mix"))
        if len(rows) == 0:
            raise UsageError(f"train.seq_len: the validation split ({self.val.total} tokens) holds no row of "
                             f"{r.plan.heldout.row_width} tokens; lower train.seq_len or raise data.val_fraction")
        return rows

    def heldout_share(self, r: Recipe) -> float:
        """The share of the validation split that the held-out rows are (reported with every held-out loss)."""
        return heldout_share(self.val, r.plan.heldout.row_width, r.plan.heldout_count)


@dataclass
class TrainData(PreparedData):
    """The data a training run reads: the prepared shards and the recipe's pack (which rows each phase reads)."""
    pack: packing.Pack

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


def open_prepared(data_dir: Path, full_verify: bool = False) -> PreparedData:
    """Read the manifest, check every shard against it (sizes and edge hashes; with `full_verify`, every sha256)
    and memory-map both splits."""
    manifest = shards.read_manifest(data_dir)
    shards.verify(data_dir, manifest, full=full_verify)
    return PreparedData(data_dir, manifest, shards.manifest_sha256(data_dir),
                        shards.TokenStore(data_dir, manifest, "train"), shards.TokenStore(data_dir, manifest, "val"))


def open_data(r: Recipe, data_dir: Path, full_verify: bool = False) -> tuple[TrainData, bool]:
    """The prepared shards and the recipe's pack (built now if missing). Returns (data, pack_built)."""
    p = open_prepared(data_dir, full_verify)
    pack, built = packing.ensure_pack(r.plan, r.run.seed, r.data, data_dir, p.manifest, p.manifest_sha)
    return TrainData(p.data_dir, p.manifest, p.manifest_sha, p.train, p.val, pack), built
