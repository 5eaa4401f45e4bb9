"""Compressed files read to their end or not at all. A gzip or zstd stream that stops before its end (a copy cut
short, a download interrupted) raises `EOFError` — Python's gzip does; zstandard's readers return the frames they
could decode and stop, so `.zst` goes through `_ZstdFrames`. `what_failed` words it for a one-line error."""
from __future__ import annotations

import gzip
import io
from typing import BinaryIO

ZSTD = (".zst", ".zstd")  # DCLM-baseline's files end in .jsonl.zstd
CHUNK = 1 << 20


def open_bytes(path: str, zstandard=None) -> BinaryIO:
    """The decompressed bytes of `path` (.gz, .zst/.zstd — `zstandard`, the module, for those — or plain)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(ZSTD):
        return io.BufferedReader(_ZstdFrames(path, zstandard), CHUNK)
    return open(path, "rb")


def what_failed(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return f"truncated: the compressed stream ends early ({e})"
    return f"{type(e).__name__}: {e}".splitlines()[0]


class _ZstdFrames(io.RawIOBase):
    """A zstd file's frames, one after another; end of file inside a frame is `EOFError`. (A file cut exactly
    between two frames is a valid shorter stream: no reader can tell.)"""

    def __init__(self, path: str, zstandard):
        self._file, self._zstd = open(path, "rb"), zstandard
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._out, self._at = b"", 0  # decompressed bytes not yet read: self._out[self._at:]

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while self._at == len(self._out):
            data = self._file.read(CHUNK)
            if not data:
                if self._frame is not None:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            while data:
                if self._frame is None:
                    self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._out, self._at = self._out[self._at:] + self._frame.decompress(data), 0
                data = b""
                if self._frame.eof:  # the frame is complete: what follows starts the next one
                    data, self._frame = self._frame.unused_data, None
        n = min(len(buf), len(self._out) - self._at)
        buf[:n] = memoryview(self._out)[self._at:self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()
