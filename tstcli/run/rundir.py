"""The self-describing run directory: resolved recipe, tokenizer, data manifest, metrics, checkpoints."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tstcli import __version__, locks
from tstcli import recipe as recipes
from tstcli.errors import CheckpointError, UsageError, as_error, environment_fault
from tstcli.files import file_sha256, write_json_atomic
from tstcli.prep import dependents
from tstcli.run.metrics import METRICS

RECIPE, RUN_INFO, CHECKPOINTS = "recipe.toml", "run.json", "checkpoints"
TOKENIZER, MANIFEST = "tokenizer.json", "manifest.json"
# Tracker state (W&B run id, TensorBoard log dir) kept so a resume continues the same tracker runs.
TRACKERS = "trackers.json"


def holds_run(run_dir: Path) -> bool:
    return (run_dir / RUN_INFO).exists() or (run_dir / METRICS).exists() or (run_dir / CHECKPOINTS).exists()


def ensure_new(run_dir: Path) -> None:
    """A run starts only in a new or empty directory (tst's own lock file aside): never over a user's files."""
    if holds_run(run_dir):
        raise UsageError(f"run directory {run_dir} already holds a run: continue it with `tst resume {run_dir}` "
                         "or pass another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} is a file: pass another --run-dir")
    others = sorted(p.name for p in run_dir.iterdir() if p.name != locks.LOCK) if run_dir.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UsageError(f"run directory {run_dir} is not empty and holds no run ({shown}): a run starts in a new "
                         "or empty directory, never over other files; pass another --run-dir")


def lock(run_dir: Path) -> locks.DirLock:
    """The run directory's writer lock (`train`, `resume`; rank 0 under torchrun), held until the process ends.
    A second writer gets one line naming the holder; a lock whose process died is simply taken over."""
    try:
        return locks.DirLock(run_dir).acquire(wait=False)
    except locks.Busy as e:
        raise CheckpointError(f"run directory {run_dir} is in use by {e.holder}: wait for it to finish or stop it "
                              "(Ctrl-C or SIGTERM saves a checkpoint), then `tst resume`") from None
    except OSError as e:
        if environment_fault(e) is None:
            raise
        raise as_error(e, CheckpointError, f"the run directory {run_dir} must be writable") from None


def create(run_dir: Path, recipe_toml: str, data_dir: Path, manifest_sha: str, pack_key: str,
           extra: dict | None = None) -> None:
    """Write the run's description (the caller holds the run's lock and the data directory's lock); `extra`: more
    fields of run.json (an anneal's `parent`)."""
    ensure_new(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECIPE).write_text(recipe_toml)
    shutil.copyfile(data_dir / TOKENIZER, run_dir / TOKENIZER)
    shutil.copyfile(data_dir / MANIFEST, run_dir / MANIFEST)
    write_json_atomic(run_dir / RUN_INFO, {"data_dir": str(data_dir.resolve()), "manifest_sha256": manifest_sha,
                                          "pack": pack_key, "tst_version": __version__, **(extra or {})})
    dependents.register(data_dir, run_dir)


def run_data_dir(run_dir: Path, info: dict | None = None, allow_changed: bool = False) -> tuple[Path, bool]:
    """(data directory the run recorded, whether its manifest changed since): what `eval` scores and `resume`
    reads. Gone data is exit 3; changed data too unless `allow_changed` — never another corpus used in silence."""
    from tstcli.data import shards
    from tstcli.errors import DataError

    info = info or read_info(run_dir)
    data_dir = Path(info["data_dir"])
    manifest_path = data_dir / shards.MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: the run's prepared data is gone (run.json names {data_dir})")
    changed = shards.manifest_sha256(data_dir) != info["manifest_sha256"]
    if changed and not allow_changed:
        raise DataError(f"{manifest_path}: the prepared data changed since this run started (manifest sha256 "
                        f"differs from {run_dir / RUN_INFO}): it is not the data this run read "
                        "(`tst resume --allow-changed-data` continues a run on the new data)")
    return data_dir, changed


def read_info(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir}: no such directory")
    path = run_dir / RUN_INFO
    if not path.is_file() or not (run_dir / RECIPE).is_file():
        raise CheckpointError(f"run directory {run_dir}: no {RUN_INFO} / {RECIPE} (not a tst run directory)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise CheckpointError(f"{path}: corrupt run description (expected JSON)") from None


# Recipe keys a user may change between a stop and a resume: they do not change what is computed. Declared with
# each key (`neutral=True` in recipe.py): how often to log, save or evaluate; side jobs that observe the run
# (trackers, in-loop benchmarks, the profiler window); how the work is split across devices ([distributed]: a
# checkpoint reshards to any strategy and world size; only floating-point summation order changes).
NEUTRAL_KEYS = recipes.NEUTRAL_KEYS


def recipe_differences(old: dict, new: dict) -> list[str]:
    """`section.key (old -> new)` for every result-changing key that differs between two recipe dicts."""
    out = []
    for section, values in new.items():
        for k, v in values.items():
            before = old.get(section, {}).get(k)
            if before != v and f"{section}.{k}" not in NEUTRAL_KEYS:
                out.append(f"{section}.{k} ({before!r} -> {v!r})")
    return out


def _check_row_order(run_dir: Path, info: dict, recipe, allow_changed_data: bool, log) -> None:
    """The rows a run reads are a function of its pack key (recipe, manifest, the row order's version): a run
    started by a tst whose row order differs would read other rows from here on."""
    from tstcli.data import packing

    now = packing.pack_key(recipe.plan, recipe.run.seed, recipe.data.mix, info["manifest_sha256"])
    if info.get("pack") in (None, now):
        return
    if not allow_changed_data:
        raise CheckpointError(f"{run_dir / RUN_INFO}: the run was started by tst {info.get('tst_version', '?')}, "
                              "whose row order differs from this version's: resuming would read other rows than it "
                              "would have; finish it with that version, or pass --allow-changed-data to go on")
    log("resume: the run's row order changes from here on (an earlier tst started it; --allow-changed-data)")
    write_json_atomic(run_dir / RUN_INFO, {**info, "pack": now})


def check_resumable(run_dir: Path, info: dict, recipe, ckpt: Path | None, allow_changed_data: bool, log) -> None:
    """Refuse a resume whose recipe, tokenizer or data differ from the run's in a way that changes results.

    recipe: the run directory's recipe (as loaded); ckpt: the checkpoint to resume from (None: from the start).
    A changed data manifest is allowed with `allow_changed_data` (then every shard's sha256 is checked).
    """
    from tstcli.data import packing, shards
    from tstcli.errors import DataError

    if ckpt is not None:
        from tstcli.run import checkpoint, metrics

        metrics.check_complete(run_dir, checkpoint.read_state(ckpt)["step"],
                               "the log was cut or deleted since the checkpoint; restore it from a copy, or train "
                               "a new run (resuming would leave the curves, and tst compare, wrong)")
        saved = recipes.load(ckpt / RECIPE)
        diff = recipe_differences(recipes.to_dict(saved), recipes.to_dict(recipe))
        if diff:
            raise CheckpointError(f"{run_dir / RECIPE}: differs from the recipe of {ckpt.name} in {', '.join(diff)}; "
                                  f"that changes results: restore it (the original is {ckpt / RECIPE})")
    data_dir, changed = run_data_dir(run_dir, info, allow_changed=True)
    _check_row_order(run_dir, info, recipe, allow_changed_data, log)
    ours, theirs = run_dir / TOKENIZER, data_dir / TOKENIZER
    if not ours.is_file():
        raise CheckpointError(f"{ours}: missing — the run's own copy of its tokenizer; restore it (the data dir's "
                              f"copy is {theirs})")
    if not theirs.is_file() or file_sha256(ours) != file_sha256(theirs):
        raise DataError(f"{theirs}: the tokenizer differs from the run's ({ours}); the run cannot continue on it")
    if changed:
        if not allow_changed_data:
            run_data_dir(run_dir, info)  # raises the changed-data error
        manifest_path = data_dir / shards.MANIFEST
        shards.verify(data_dir, shards.read_manifest(data_dir), full=True)
        log(f"resume: continuing on changed data in {data_dir} (--allow-changed-data); every shard's sha256 checked")
        sha = shards.manifest_sha256(data_dir)
        key = packing.pack_key(recipe.plan, recipe.run.seed, recipe.data.mix, sha)
        info = {**info, "manifest_sha256": sha, "pack": key,
                "data_changes": info.get("data_changes", 0) + 1}
        shutil.copyfile(manifest_path, run_dir / MANIFEST)
        write_json_atomic(run_dir / RUN_INFO, info)
