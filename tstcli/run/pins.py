"""Readers' pins on checkpoints: `tst eval`, `tst sample` and `tst export` read a checkpoint while the run may
still be training, and the trainer prunes old checkpoints. A reader holds a shared `flock` on the checkpoint's
`.readers` file while it reads; pruning takes it exclusively without waiting, and leaves a checkpoint that is being
read for a later prune (the next save). A checkpoint is removed by renaming it out of the `step-*` namespace first,
so a reader that found it just before sees its pin file gone once it holds the lock, and takes the newest one
instead. The trainer never waits on a reader; a reader never fails because training went on.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

from tstcli.errors import CheckpointError

PIN = ".readers"
_RETRIES = 100  # a reader losing the race this often means a checkpoint every few milliseconds: give up loudly
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def make(checkpoint: Path) -> None:
    """The pin file of a checkpoint being written (before it is renamed into place: readers need no write access)."""
    (checkpoint / PIN).touch()


def _open(checkpoint: Path) -> int | None:
    """A read-only descriptor of the pin file (made if a checkpoint of an older tst has none); None when it cannot
    be made (a read-only run directory, where no trainer can prune either)."""
    path = checkpoint / PIN
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except (PermissionError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise  # the checkpoint itself is gone: the caller takes the next one
        return None


def _still_there(fd: int, checkpoint: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(checkpoint / PIN))
    except FileNotFoundError:
        return False


def _lock(fd: int, flags: int) -> bool:
    """flock; False when it would block (LOCK_NB). A file system without locks counts as locked: nothing to race."""
    try:
        fcntl.flock(fd, flags)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return True
        raise


@contextlib.contextmanager
def reading(find):
    """Yields `find()` — a checkpoint path — pinned: it will not be pruned until the block ends. When the
    checkpoint is pruned between `find()` and the pin, `find()` is asked again."""
    for _ in range(_RETRIES):
        path = find()
        try:
            fd = _open(path)
        except FileNotFoundError:
            continue
        if fd is None:
            yield path
            return
        try:
            _lock(fd, fcntl.LOCK_SH)
            if _still_there(fd, path):
                yield path
                return
        finally:
            os.close(fd)
    raise CheckpointError(f"{path.parent}: {_RETRIES} checkpoints were pruned while this reader tried to pin one; "
                          "retry, or read a run that saves less often")


def remove_unless_read(checkpoint: Path) -> bool:
    """Delete a checkpoint no reader holds (never waiting for one); False when a reader holds it."""
    try:
        fd = os.open(checkpoint / PIN, os.O_RDONLY)
    except OSError:
        fd = None  # an older checkpoint without a pin, or one already gone
    try:
        if fd is not None and not _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False
        gone = checkpoint.with_name(f".tmp-pruned-{checkpoint.name}")
        try:
            checkpoint.rename(gone)
        except FileNotFoundError:
            return True
    finally:
        if fd is not None:
            os.close(fd)
    shutil.rmtree(gone, ignore_errors=True)
    return True
