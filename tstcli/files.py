"""Small file helpers every layer shares: a file replaced in one rename (a reader sees the old file or the new one,
never a torn one), durable writes (fsync of a file and of a directory) and the sha256 of a file."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path):
    """Yields a temporary path beside `path`; what the block writes there replaces `path` in one rename when the
    block ends without an error (else the temporary file is removed). The writer makes it durable if it must."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """`text` into `path`, durably (fsync), replacing any earlier file in one rename."""
    with replacing(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, obj: dict) -> None:
    """`obj` as indented JSON with sorted keys, written as `write_text_atomic` writes."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read 4 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def plain_name(name) -> bool:
    """One plain path component: not empty, not '.' or '..', no separator — a name that stays inside its folder."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
