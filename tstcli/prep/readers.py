"""Reading documents out of one corpus file, whatever its format: plain text (documents at blank lines, or one per
file), JSON lines (text in `data.text_field`), each optionally gzip- or zstd-compressed, and Parquet (the text
column read batch by batch with pyarrow, so memory is bounded by a batch, not the file). Every reader yields the
file's non-empty documents in file order; damage is one DataError naming the file.

Parquet needs pyarrow and `.zst` needs zstandard: `pip install 'tst[data]'`.
"""
from __future__ import annotations

import codecs
import io
import json
import zlib
from typing import Iterator

from tstcli.compressed import ZSTD, open_bytes, what_failed
from tstcli.errors import DataError

TEXT = (".txt", ".txt.gz")
JSON_LINES = (".jsonl", ".jsonl.gz", ".json.gz") + tuple(f"{base}{z}" for base in (".jsonl", ".json") for z in ZSTD)
PARQUET = (".parquet",)
SUFFIXES = TEXT + JSON_LINES + PARQUET
PARQUET_BATCH_ROWS = 1024  # documents per batch read from a Parquet file

_bad_bytes = [0]  # bytes replaced by the "tst-replace" handler in this process


def _replace_counting(err: UnicodeDecodeError) -> tuple[str, int]:
    _bad_bytes[0] += err.end - err.start
    return "\ufffd", err.end  # what errors="replace" does


codecs.register_error("tst-replace", _replace_counting)


class DecodeStats:
    """Bytes of input that were not valid UTF-8 (each invalid sequence became U+FFFD), per source file."""

    def __init__(self):
        self.by_file: dict[str, int] = {}

    @property
    def replaced(self) -> int:
        return sum(self.by_file.values())

    def summary(self) -> str:
        worst = max(self.by_file, key=self.by_file.get)
        return (f"{self.replaced:,} bytes of input were not valid UTF-8 and became U+FFFD, in "
                f"{len(self.by_file)} file(s) (most in {worst}: {self.by_file[worst]:,})")


def _extra(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise DataError(f"{what}: reading it needs {module}: pip install 'tst[data]'") from None


def _open_text(path: str, origin: str) -> io.TextIOBase:
    zstandard = _extra("zstandard", origin) if path.endswith(ZSTD) else None
    return io.TextIOWrapper(open_bytes(path, zstandard), encoding="utf-8", errors="tst-replace")


def documents(path: str, origin: str, text_field: str, txt_documents: str,
              decode: DecodeStats | None = None, row_groups: tuple[int, int] | None = None) -> Iterator[str]:
    """The non-empty documents of the file at `path` (`origin`: what the recipe named, for messages); of a Parquet
    file, those of row groups [a, b) when `row_groups` = (a, b)."""
    before = _bad_bytes[0]
    try:
        if path.endswith(PARQUET):
            yield from _parquet(path, origin, text_field, row_groups)
        else:
            yield from _text_documents(path, origin, text_field, txt_documents)
    finally:
        if decode is not None and _bad_bytes[0] > before:
            decode.by_file[origin] = decode.by_file.get(origin, 0) + _bad_bytes[0] - before


def parquet_row_groups(path: str, origin: str) -> list[int]:
    """The (uncompressed) size of each row group of a Parquet file, from its footer: no data is read."""
    _extra("pyarrow", origin)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        return [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{origin}: not a readable Parquet file ({type(e).__name__}: {e})".splitlines()[0]) from None


def _parquet(path: str, origin: str, text_field: str, row_groups: tuple[int, int] | None) -> Iterator[str]:
    _extra("pyarrow", origin)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DataError(f"{origin}: no column '{text_field}' (data.text_field); columns: "
                            f"{', '.join(pf.schema_arrow.names[:8])}")
        if not pa.types.is_string(pf.schema_arrow.field(text_field).type) and \
                not pa.types.is_large_string(pf.schema_arrow.field(text_field).type):
            raise DataError(f"{origin}: column '{text_field}' holds {pf.schema_arrow.field(text_field).type}, "
                            "not text (data.text_field)")
        groups = None if row_groups is None else list(range(*row_groups))
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field], row_groups=groups):
            for text in batch.column(0).to_pylist():
                if text and text.strip():
                    yield text
    except (pa.ArrowException, OSError) as e:  # a damaged or truncated file: pyarrow raises several types
        raise DataError(f"{origin}: not a readable Parquet file ({type(e).__name__}: {e})".splitlines()[0]) from None


def _text_documents(path: str, origin: str, text_field: str, txt_documents: str) -> Iterator[str]:
    zstd_error = _extra("zstandard", origin).ZstdError if path.endswith(ZSTD) else zlib.error
    try:
        with _open_text(path, origin) as fh:
            if path.endswith(JSON_LINES):
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                        line = None  # a huge document's raw line need not live on beside its text
                    except (ValueError, KeyError, TypeError):
                        raise DataError(f"{origin}:{lineno}: expected a JSON object with a string "
                                        f"'{text_field}' field (data.text_field)") from None
                    if not isinstance(text, str):
                        raise DataError(f"{origin}:{lineno}: field '{text_field}' is not a string")
                    if text.strip():
                        yield text
            elif txt_documents == "file":
                text = fh.read()
                if text.strip():
                    yield text
            else:
                buf: list[str] = []
                for line in fh:
                    if line.strip():
                        buf.append(line)
                    elif buf:
                        yield "".join(buf).rstrip("\n")
                        buf = []
                if buf:
                    yield "".join(buf).rstrip("\n")
    except (OSError, EOFError, zlib.error, zstd_error) as e:  # truncated or damaged compressed input, unreadable
        raise DataError(f"{origin}: cannot read: {what_failed(e)}") from None
