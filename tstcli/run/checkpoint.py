"""Checkpoints: `checkpoints/step-NNNNNNNN/`, written with torch.distributed.checkpoint (DCP).

Every rank writes its own shard of the model and optimizer state as a safetensors file (DCP's Hugging Face storage
layout: the sharding of each tensor is recorded in the file's header), so a checkpoint saved by N ranks under
FSDP2 loads in M ranks, or in one process, with DCP resharding it. Nothing is pickled: DCP's default layout keeps
its metadata as a pickle, this one does not. The training state (JSON) and the recipe are written by rank 0.

All of it goes to a temporary directory first; rank 0 writes `state.json` last (it lists the shard files with
their sha256), fsyncs and renames the directory into place. A directory named `step-*` holding `state.json` and
the recipe is complete; temporary directories are ignored (and removed by the next prune). Loading checks that every
listed file is there with its recorded sha256 and that no weight is NaN or infinite: a damaged checkpoint is exit 4
naming the file, never a silently different model, and never skipped in silence.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from tstcli.errors import CheckpointError, as_error, environment_fault
from tstcli.files import fsync_dir, fsync_file, plain_name
from tstcli.parallel.world import World, barrier, sum_across
from tstcli.run import pins
from tstcli.run.integrity import check_finite, checksums, verify_files

STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE, RECIPE = "state.json", "recipe.toml"
STATE_SHA = "state_sha256"  # state.json's checksum of itself
FORMAT = "dcp-safetensors-1"


# DCP warns when used without a process group (one process), a supported use here. Filtered once, for DCP's own
# modules: `warnings.catch_warnings` is not thread-safe, and checkpoints are also written from a background thread.
warnings.filterwarnings("ignore", message=".*torch.distributed.*", module=r"torch\.distributed\.checkpoint")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed\.checkpoint")


@contextlib.contextmanager
def quiet_dcp():
    """DCP logs failures with tracebacks on the root logger, where our single error line says it instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def checkpoint_bytes(model: torch.nn.Module) -> int:
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * n + (1 << 20)  # weights + two Adam moments + metadata (all ranks together)


def _tied(model_sd: dict) -> dict[str, str]:
    """{alias: name} for entries that share storage with an earlier one (tied embedding and head): safetensors
    stores a tensor once, so aliases are left out on save and pointed at their original on load."""
    seen, aliases = {}, {}
    for name, t in model_sd.items():
        local = t.to_local() if hasattr(t, "to_local") else t
        if local.numel() == 0:
            continue
        key = (local.data_ptr(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def _untied(model_sd: dict) -> tuple[dict, dict[str, str]]:
    aliases = _tied(model_sd)
    return {k: v for k, v in model_sd.items() if k not in aliases}, aliases


def _tmp_dir(root: Path, step: int) -> Path:
    return root / f".tmp-step-{step:08d}"


def begin(root: Path, step: int, model, world: World) -> Path:
    """Every rank: check the space (all ranks take rank 0's decision) and make the temporary directory of `step`."""
    tmp = _tmp_dir(root, step)
    short = 0
    if world.main:
        root.mkdir(parents=True, exist_ok=True)
        need, free = checkpoint_bytes(model), shutil.disk_usage(root).free
        short = int(free < need)
        if not short:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
    # Every rank must take the same decision, or the others would wait in the save below forever.
    if sum_across([short])[0]:
        free, need = shutil.disk_usage(root).free, checkpoint_bytes(model)
        raise CheckpointError(f"{root}: {free / 2**20:.0f} MiB free, a checkpoint needs about "
                              f"{need / 2**20:.0f} MiB; free space and run `tst resume`")
    barrier()
    return tmp


def state_dicts(model, optimizer) -> dict:
    """What a checkpoint holds of the model and optimizer (views of the live tensors: copy before training on).
    `optimizer`: one optimizer or a list over disjoint parameters (AdamW beside Muon): their states by parameter
    name, in one dict."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    model_sd, _ = _untied(model_sd)
    return {"model": model_sd, "optim": {"state": optim_sd["state"]}}


def write(tmp: Path, step: int, sd: dict, state: dict, recipe_toml: str, world: World = World(),
          group=None) -> Path:
    """Every rank writes its shards of `sd` into `tmp` (made by `begin`); rank 0 finishes the checkpoint and
    renames it into place. `group`: the process group of its collectives (a background writer needs its own)."""
    root = tmp.parent
    final = root / f"step-{step:08d}"
    try:
        with quiet_dcp():
            dcp.save(sd, storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True),
                     process_group=group)
        barrier(group)
        if world.main:
            _finish(tmp, final, root, state, recipe_toml, world)
    except (OSError, CheckpointException) as e:  # CheckpointException is a BaseException: `except Exception` misses it
        shutil.rmtree(tmp, ignore_errors=True)
        fault = environment_fault(e) or _first_os_error(e)
        if fault is None:
            raise CheckpointError(f"{tmp}: cannot write the checkpoint ({reason(e)})") from None
        raise as_error(fault, CheckpointError, "writing a checkpoint; the previous checkpoint is intact, free space "
                                               "and run `tst resume`", path=tmp) from None
    barrier(group)
    return final


def _first_os_error(e: BaseException) -> OSError | None:
    """The environment fault inside DCP's CheckpointException (it carries each rank's failure)."""
    if isinstance(e, CheckpointException):
        for failure in e.failures.values():
            found = environment_fault(failure[0] if isinstance(failure, tuple) else failure)
            if found is not None:
                return found
    return None


def _finish(tmp: Path, final: Path, root: Path, state: dict, recipe_toml: str, world: World) -> None:
    """Rank 0: recipe and state.json (files and their sha256) into `tmp`, fsync, rename into place."""
    files = sorted(p.name for p in tmp.glob("*.safetensors"))
    (tmp / RECIPE).write_text(recipe_toml)
    pins.make(tmp)
    doc = {**state, "format": FORMAT, "world_size": world.size, "files": files, "sha256": checksums(tmp, files)}
    (tmp / STATE).write_text(json.dumps({**doc, STATE_SHA: _state_sha(doc)}, indent=1, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        fsync_file(f)
    fsync_dir(tmp)
    old = None
    if final.exists():  # a checkpoint of the same step from an earlier attempt: set it aside, atomically
        old = final.with_name(f".tmp-old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _state_sha(doc: dict) -> str:
    """The sha256 of a state's canonical JSON (sorted keys), its own checksum left out: the JSON round trip is exact
    (floats print as their shortest repr), so a reader recomputes it from what it parsed."""
    body = {k: v for k, v in doc.items() if k != STATE_SHA}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_state(path: Path) -> dict:
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / STATE}: cannot read the checkpoint's state ({e})".splitlines()[0]) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / STATE}: not a checkpoint state (a JSON object)")
    # Checkpoints of earlier tst versions carry no checksum of their own: their files' checksums still hold.
    if STATE_SHA in state and state[STATE_SHA] != _state_sha(state):
        raise CheckpointError(f"{path / STATE}: damaged (its checksum does not match its content); delete {path} to "
                              "use an earlier checkpoint")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, this tst reads {FORMAT!r}")
    bad = [f for f in state.get("files", []) if not plain_name(f)]
    if bad:
        raise CheckpointError(f"{path / STATE}: names {bad[0]!r}, not a file of the checkpoint's own folder")
    missing = [f for f in state.get("files", []) if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path / missing[0]}: missing (named in {path / STATE}); restore it, or delete "
                              f"{path} to use an earlier checkpoint")
    return state


def _is_complete(p: Path) -> bool:
    """Renamed into place: `state.json` (written last, then the rename) and the recipe are there. Whether the files
    it lists are all there and intact is checked when it is loaded, loudly: a damaged checkpoint is refused, never
    skipped in silence (skipping the only one would restart a run from step 0)."""
    try:
        state = json.loads((p / STATE).read_text())
        return (p / RECIPE).is_file() and bool(state["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def complete(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if STEP_DIR.match(p.name) and _is_complete(p)]
    return sorted(out, key=lambda p: p.name)


def latest(root: Path) -> Path | None:
    found = complete(root)
    return found[-1] if found else None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints — but not one a reader holds (`pins`): the next prune
    takes it — and any leftover temporary directories."""
    found = complete(root)
    if keep > 0:
        for p in found[:-keep]:
            pins.remove_unless_read(p)
    for p in root.glob(".tmp-*"):  # unfinished saves, and a replaced checkpoint set aside
        shutil.rmtree(p, ignore_errors=True)


LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, AssertionError, SafetensorError, CheckpointException)


def reason(e: BaseException) -> str:
    """One line: the first rank's underlying error for DCP's CheckpointException (which carries tracebacks)."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    return f"{type(e).__name__}: {e}".splitlines()[0]


def load(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer in place (resharding to this world); return the training state."""
    state = read_state(path)
    verify_files(path, state.get("sha256", {}))
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        model_sd, aliases = _untied(model_sd)
        sd = {"model": model_sd, "optim": {"state": optim_sd["state"]}}
        with quiet_dcp():
            dcp.load(sd, storage_reader=HuggingFaceStorageReader(str(path)))
        sd["model"].update({alias: sd["model"][name] for alias, name in aliases.items()})
        set_state_dict(model, optimizer, model_state_dict=sd["model"],
                       optim_state_dict={"state": sd["optim"]["state"], "param_groups": optim_sd["param_groups"]})
    except LOAD_ERRORS as e:
        raise CheckpointError(f"{path}: cannot load checkpoint ({reason(e)})") from None
    check_finite(model.named_parameters(), path)
    for k in ("format", "files", "sha256"):
        state.pop(k, None)
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
    """Model weights only, into a plain (unsharded) model: export and evaluation."""
    verify_files(path, read_state(path).get("sha256", {}))
    try:
        sd, aliases = _untied(get_model_state_dict(model))
        with quiet_dcp():
            dcp.load({"model": sd}, storage_reader=HuggingFaceStorageReader(str(path)))
        sd.update({alias: sd[name] for alias, name in aliases.items()})
        set_model_state_dict(model, sd, options=StateDictOptions(strict=True))
    except LOAD_ERRORS as e:
        raise CheckpointError(f"{path}: cannot load model weights ({reason(e)})") from None
    check_finite(model.named_parameters(), path)
