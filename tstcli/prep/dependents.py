"""The runs that depend on a data directory, so that a preparation of other inputs never replaces their data.

`runs.json` in the data directory lists every run directory created on it. A run still depends on the data when
its `run.json` (the run directory's contract, docs/design.md) names this data directory and this manifest's
sha256; a deleted run, or one that moved on, no longer does. A run directory renamed or moved since is found by a
hard link: the run holds `.data-claim` (an empty file) and the data directory a link to it under `claims/`; while
the run directory exists anywhere on that file system the link counts 2. (Across file systems no link can be made:
then only the path protects.) Callers hold the data directory's lock.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

from tstcli.data.shards import MANIFEST, manifest_sha256
from tstcli.errors import DataError, environment_fault
from tstcli.files import write_json_atomic

REGISTRY = "runs.json"
RUN_INFO = "run.json"  # written by tstcli.run.rundir: {"data_dir", "manifest_sha256", ...}
CLAIM, CLAIMS = ".data-claim", "claims"  # the run's file, and the data directory's folder of links to them


def _claim_name(run: str) -> str:
    return hashlib.sha256(run.encode()).hexdigest()[:16]


def _claimed(data_dir: Path, run: str) -> bool:
    """The run registered as `run` still exists, wherever it is now: its claim's link count is 2."""
    try:
        return os.stat(data_dir / CLAIMS / _claim_name(run)).st_nlink >= 2
    except OSError:
        return False


def _registered(data_dir: Path) -> list[str]:
    try:
        runs = json.loads((data_dir / REGISTRY).read_text())["runs"]
        return [r for r in runs if isinstance(r, str)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def register(data_dir: Path, run_dir: Path) -> None:
    """Record that `run_dir` reads `data_dir` (a data directory that cannot be written cannot be replaced either)."""
    runs = _registered(data_dir)
    me = str(Path(run_dir).resolve())
    if me in runs:
        return
    try:
        write_json_atomic(data_dir / REGISTRY, {"runs": runs + [me]})
        claim = Path(run_dir) / CLAIM
        claim.touch()
        (data_dir / CLAIMS).mkdir(exist_ok=True)
        link = data_dir / CLAIMS / _claim_name(me)
        link.unlink(missing_ok=True)
        os.link(claim, link)
    except OSError as e:
        if e.errno != errno.EXDEV and environment_fault(e) is None:  # EXDEV: another file system, no link
            raise


def live(data_dir: Path) -> list[str]:
    """Run directories whose data is the current preparation in `data_dir`."""
    if not (data_dir / MANIFEST).is_file():
        return []
    sha, here = manifest_sha256(data_dir), Path(data_dir).resolve()
    out = []
    for run in _registered(data_dir):
        try:
            info = json.loads((Path(run) / RUN_INFO).read_text())
            if Path(info["data_dir"]).resolve() == here and info["manifest_sha256"] == sha:
                out.append(run)
        except (OSError, ValueError, KeyError, TypeError):
            if not (Path(run) / RUN_INFO).exists() and _claimed(data_dir, run):  # renamed or moved, not deleted
                out.append(f"{run} (renamed or moved since)")
    return out


def refuse_replacing(data_dir: Path) -> None:
    runs = live(data_dir)
    if runs:
        more = f" (and {len(runs) - 1} more, listed in {data_dir / REGISTRY})" if len(runs) > 1 else ""
        raise DataError(f"{data_dir}: holds the prepared data of the run {runs[0]}{more}; preparing other inputs "
                        "here would change that run's data under it: set data.dir to another directory, or delete "
                        "that run first")
