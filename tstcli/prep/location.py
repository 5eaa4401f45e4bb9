"""Where a recipe's prepared data lives: `data.dir`, or a name derived from what is prepared, so that recipes with
other sources or another tokenizer never share (and so never replace) each other's prepared data."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from tstcli.recipe import Recipe

# Keys that change how data is read or packed, not which tokens are prepared.
NOT_HASHED = ("dir", "repeat", "stream")


def data_dir(r: Recipe) -> Path:
    """data.dir, or data/<run.name>-<8 hex digits of the data keys that decide what is prepared>."""
    if r.data.dir:
        return Path(r.data.dir)
    # Only keys that differ from their defaults: a later tst adding a data key keeps today's directories.
    defaults = dataclasses.asdict(type(r.data)())
    keys = {k: v for k, v in dataclasses.asdict(r.data).items() if k not in NOT_HASHED and v != defaults[k]}
    if "mix" in keys:  # weights decide the packing, not what is tokenized: a new weight re-packs the same data
        keys["mix"] = [{"name": e["name"], "sources": e["sources"]} for e in keys["mix"]]
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
    return Path(f"data/{r.run.name}-{digest}")
