"""What a data directory holds: whether it is tst's to write (`check_ours`), and whether it holds a preparation of
given inputs (`holds`) — a file whose mtime alone changed (`touch`, a copy) is compared by content."""
from __future__ import annotations

from pathlib import Path

from tstcli import locks
from tstcli.data import shards
from tstcli.errors import DataError
from tstcli.files import file_sha256
from tstcli.prep.work import WORK


def check_ours(data_dir: Path) -> None:
    """Refuse a `data.dir` that tst did not make before anything is written there: tst writes shards and a
    tokenizer into it and deletes files under `packs/`. Ours: new, empty, or holding a manifest, a preparation's
    work directory or tst's lock (a start that stopped early)."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir}: data.dir is not a directory")
    if not data_dir.is_dir():
        return
    try:
        names = sorted(p.name for p in data_dir.iterdir())
    except OSError as e:
        raise DataError(f"{data_dir}: data.dir cannot be listed ({e.strerror or e})") from None
    if names and not {shards.MANIFEST, WORK, locks.LOCK} & set(names):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise DataError(f"{data_dir}: data.dir holds files tst did not write ({shown}); name a new or empty "
                        "folder, or a tst data directory")


def holds(data_dir: Path, inputs: dict) -> bool:
    """`data_dir` holds a preparation of exactly these inputs (its shards are verified separately, so a corrupt
    shard is reported as such rather than silently rebuilt)."""
    if not (data_dir / shards.MANIFEST).is_file():
        return False
    manifest = shards.read_manifest(data_dir)
    return manifest.get("inputs") == inputs or _same_content(manifest, inputs)


def _same_content(manifest: dict, inputs: dict) -> bool:
    """The inputs differ from the manifest's only in the mtime of local files whose size and content (sha256, as
    recorded when they were prepared) are unchanged: `touch` or a copy is not other inputs."""
    had, hashes = manifest.get("inputs", {}), manifest.get("source_sha256", {})
    if {k: v for k, v in had.items() if k != "sources"} != {k: v for k, v in inputs.items() if k != "sources"}:
        return False
    old, new = had.get("sources", []), inputs["sources"]
    if [s["origin"] for s in old] != [s["origin"] for s in new]:
        return False
    paths = {s["origin"]: s["path"] for s in manifest.get("sources", [])}
    for was, now in zip(old, new):
        if was["fingerprint"] == now["fingerprint"]:
            continue
        size_was, size_now = (str(f["fingerprint"]).split(":")[0] for f in (was, now))
        origin = now["origin"]
        if size_was != size_now or origin not in hashes or origin not in paths:
            return False
        try:
            if file_sha256(Path(paths[origin])) != hashes[origin]:
                return False
        except OSError:
            return False
    return True
