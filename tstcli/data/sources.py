"""Corpus sources: resolve recipe entries to files and stream documents out of them.

Supported: `.txt`, `.txt.gz` (documents separated by blank lines, or one per file), `.jsonl`, `.jsonl.gz` and
`.json.gz` (JSON lines, the layout of C4's files: one document per line, text in a configurable field), directories
of those (sorted, recursive), Hugging Face hub files (`hf://datasets/OWNER/NAME/PATH[@REVISION]`, where PATH may be
a glob such as `en/c4-train.000[0-4]?-of-01024.json.gz`, downloaded through huggingface-hub), and
`builtin:sample`, the
public-domain corpus shipped inside the package. Everything streams: memory does not grow with the corpus.
"""
from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tstcli.data import hub
from tstcli.errors import DataError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json.gz")
JSON_LINES = (".jsonl", ".jsonl.gz", ".json.gz")
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "corpus"


@dataclass(frozen=True)
class SourceFile:
    path: str  # local path, after any download
    origin: str  # what the recipe named (for the manifest)
    fingerprint: str  # size + mtime for local files, revision for hub files: decides whether prepare is up to date


def _is_corpus_file(p: Path) -> bool:
    return p.name.endswith(SUFFIXES)


def _local(path: Path, origin: str) -> list[SourceFile]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_corpus_file(p))
        if not files:
            raise DataError(f"data.sources: directory {path} holds no {', '.join(SUFFIXES)} files")
        return [f for p in files for f in _local(p, f"{origin}/{p.relative_to(path)}")]
    if not path.exists():
        raise DataError(f"data.sources: {origin}: no such file or directory")
    if not _is_corpus_file(path):
        raise DataError(f"data.sources: {origin}: unsupported file type (expected {', '.join(SUFFIXES)})")
    st = path.stat()
    return [SourceFile(str(path), origin, f"{st.st_size}:{st.st_mtime_ns}")]


def _hub(spec: str) -> list[SourceFile]:
    # hf://datasets/OWNER/NAME/PATH/IN/REPO[@REVISION]
    rest = spec[len("hf://datasets/"):]
    rest, _, revision = rest.partition("@")
    parts = rest.split("/")
    if len(parts) < 3:
        raise DataError(f"data.sources: {spec}: expected hf://datasets/OWNER/NAME/PATH")
    repo_id, pattern = "/".join(parts[:2]), "/".join(parts[2:])
    what, hint = f"data.sources: {spec}", "download it on a networked machine or use a local copy"
    if any(c in pattern for c in "*?["):
        return [f for name in hub.matching_files(repo_id, pattern, revision, what, hint)
                for f in _hub(f"hf://datasets/{repo_id}/{name}" + (f"@{revision}" if revision else ""))]
    local = hub.dataset_file(repo_id, pattern, revision, what, hint)
    if not _is_corpus_file(Path(local)):
        raise DataError(f"data.sources: {spec}: unsupported file type (expected {', '.join(SUFFIXES)})")
    return [SourceFile(local, spec, f"hub:{revision or 'main'}:{os.path.getsize(local)}")]


def resolve(sources: list[str]) -> list[SourceFile]:
    files: list[SourceFile] = []
    for spec in sources:
        if spec == "builtin:sample":
            files += _local(BUILTIN_DIR, "builtin:sample")
        elif spec.startswith("hf://"):
            if not spec.startswith("hf://datasets/"):
                raise DataError(f"data.sources: {spec}: only dataset files are supported (hf://datasets/...)")
            files += _hub(spec)
        else:
            files += _local(Path(spec).expanduser(), spec)
    return files


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


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="tst-replace")
    return open(path, encoding="utf-8", errors="tst-replace")


def iter_documents(f: SourceFile, text_field: str, txt_documents: str,
                   decode: DecodeStats | None = None) -> Iterator[str]:
    """Yield the documents of one source file, in file order, skipping empty ones (invalid UTF-8 bytes counted in
    `decode`)."""
    before = _bad_bytes[0]
    try:
        yield from _documents_of(f, text_field, txt_documents)
    finally:
        if decode is not None and _bad_bytes[0] > before:
            decode.by_file[f.origin] = decode.by_file.get(f.origin, 0) + _bad_bytes[0] - before


def _documents_of(f: SourceFile, text_field: str, txt_documents: str) -> Iterator[str]:
    try:
        with _open_text(f.path) as fh:
            if f.path.endswith(JSON_LINES):
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                        line = None  # a huge document's raw line need not live on beside its text
                    except (ValueError, KeyError, TypeError):
                        raise DataError(f"{f.origin}:{lineno}: expected a JSON object with a string "
                                        f"'{text_field}' field (data.text_field)") from None
                    if not isinstance(text, str):
                        raise DataError(f"{f.origin}:{lineno}: field '{text_field}' is not a string")
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
    except (OSError, EOFError, zlib.error) as e:  # truncated or damaged compressed input, unreadable file
        raise DataError(f"{f.origin}: cannot read: {type(e).__name__}: {e}".splitlines()[0]) from None
