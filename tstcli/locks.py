"""Exclusive directory locks: one writer per run directory and per data directory.

`DIR/.lock` is locked with `fcntl.flock` and holds who holds it (pid, host, start time, command) for the error a
second writer prints. The kernel drops a flock when its process dies, however it dies (kill -9 included), so a lock
left by a dead process is never "stale": the next writer simply takes it and rewrites the holder. On NFS (v4, or v3
with lockd) Linux maps flock onto byte-range locks the server arbitrates, so it holds across hosts; on Lustre it
needs the `flock` mount option. A file system that refuses locks (flock raises ENOLCK/EOPNOTSUPP) gets one warning
and no lock: the run still works, only concurrent writers are not caught.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK = ".lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class Busy(Exception):
    """The directory is locked by another process; `holder` describes it."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is in use by {holder}")
        self.path, self.holder = path, holder


def _describe(raw: str) -> str:
    try:
        h = json.loads(raw)
        return (f"pid {h['pid']} on {h['host']} since {h['started']} ({h['command']})")
    except (ValueError, KeyError, TypeError):
        return "another process"


class DirLock:
    """Held from `acquire` until `release` or the process's end. Not reentrant: acquire once per process."""

    def __init__(self, directory: Path, name: str = LOCK):
        """`name`: the lock file in `directory` (several locks can share one directory: work units' claims)."""
        self.directory = Path(directory)
        self.path = self.directory / name
        self._fd: int | None = None

    def acquire(self, wait: bool = False, on_wait=None) -> "DirLock":
        """Lock or raise Busy (wait=False); with wait=True block, calling on_wait(holder) once first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                if not wait:
                    raise Busy(self.directory, holder) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                print(f"warning: {self.path}: the file system refuses locks ({e.strerror}); concurrent writers "
                      "to this directory are not detected", file=sys.stderr)
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(["tst", *sys.argv[1:3]])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
