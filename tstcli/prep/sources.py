"""Corpus sources: resolve recipe entries to files and stream documents out of them.

Supported (read by `readers.py`): `.txt`, `.txt.gz` (documents separated by blank lines, or one per file),
`.jsonl`, `.jsonl.gz`, `.json.gz` (JSON lines, the layout of C4's files: one document per line, text in a
configurable field), `.jsonl.zst` and `.json.zst` (DCLM's layout), `.parquet` (FineWeb's; the text column),
directories of those (sorted, recursive), Hugging Face hub files (`hf://datasets/OWNER/NAME/PATH[@REVISION]`, where PATH may be
a glob such as `en/c4-train.000[0-4]?-of-01024.json.gz`, downloaded through huggingface-hub), and
`builtin:sample`, the
public-domain corpus shipped inside the package (`builtin:sample/FILE`: one of its files). Everything streams: memory does not grow with the corpus.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tstcli.errors import DataError
from tstcli.prep import hub, readers

SUFFIXES = readers.SUFFIXES
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "corpus"


@dataclass(frozen=True)
class SourceFile:
    path: str  # local path, after any download ("" for a streamed hub file: fetched when it is read)
    origin: str  # what the recipe named (for the manifest)
    fingerprint: str  # size + mtime for local files, revision for hub files: decides whether prepare is up to date
    size: int = 0  # bytes
    remote: tuple | None = None  # (repo_id, filename, revision) of a streamed hub file

    @property
    def local(self) -> bool:
        return self.remote is None


@contextlib.contextmanager
def local_copy(f: SourceFile, scratch: Path):
    """A path to read `f` from: its own, or for a streamed hub file a download into `scratch`, deleted after use (so
    the disk holds the files being read, not the corpus)."""
    if f.local:
        yield f.path
        return
    repo_id, filename, revision = f.remote
    path = hub.download_to(repo_id, filename, revision, scratch, f"data.sources: {f.origin}")
    try:
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def _is_corpus_file(p: Path) -> bool:
    return p.name.endswith(SUFFIXES)


def _local(path: Path, origin: str, key: str) -> list[SourceFile]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_corpus_file(p))
        if not files:
            raise DataError(f"{key}: directory {path} holds no {', '.join(SUFFIXES)} files")
        return [f for p in files for f in _local(p, f"{origin}/{p.relative_to(path)}", key)]
    if not path.exists():
        raise DataError(f"{key}: {origin}: no such file or directory")
    if not _is_corpus_file(path):
        raise DataError(f"{key}: {origin}: unsupported file type (expected {', '.join(SUFFIXES)})")
    st = path.stat()
    return [SourceFile(str(path), origin, f"{st.st_size}:{st.st_mtime_ns}", st.st_size)]


def _hub(spec: str, key: str, stream: bool = False) -> list[SourceFile]:
    # hf://datasets/OWNER/NAME/PATH/IN/REPO[@REVISION]
    rest = spec[len("hf://datasets/"):]
    rest, _, revision = rest.partition("@")
    parts = rest.split("/")
    if len(parts) < 3:
        raise DataError(f"{key}: {spec}: expected hf://datasets/OWNER/NAME/PATH")
    repo_id, pattern = "/".join(parts[:2]), "/".join(parts[2:])
    what, hint = f"{key}: {spec}", "download it on a networked machine or use a local copy"
    names = hub.matching_files(repo_id, pattern, revision, what, hint) if any(c in pattern for c in "*?[") \
        else [pattern]
    for name in names:
        if not _is_corpus_file(Path(name)):
            raise DataError(f"{key}: {spec}: {name}: unsupported file type (expected {', '.join(SUFFIXES)})")
    at = f"@{revision}" if revision else ""
    if stream:  # sizes from the hub's listing; each file is downloaded when its turn comes, then deleted
        sizes = hub.file_sizes(repo_id, names, revision, what, hint)
        return [SourceFile("", f"hf://datasets/{repo_id}/{name}{at}", f"hub:{revision or 'main'}:{size}", size,
                           (repo_id, name, revision)) for name, size in zip(names, sizes)]
    out = []
    for name in names:
        local = hub.dataset_file(repo_id, name, revision, what, hint)
        size = os.path.getsize(local)
        out.append(SourceFile(local, f"hf://datasets/{repo_id}/{name}{at}", f"hub:{revision or 'main'}:{size}", size))
    return out


def resolve(sources: list[str], key: str = "data.sources", stream: bool = False) -> list[SourceFile]:
    """The files of `sources` (the recipe's `key`, named in errors), in order; with `stream`, hub files are listed
    (with their sizes) but not downloaded."""
    files: list[SourceFile] = []
    for spec in sources:
        if spec == "builtin:sample":
            files += _local(BUILTIN_DIR, "builtin:sample", key)
        elif spec.startswith("builtin:sample/"):  # one file of it: mixture examples weigh them against each other
            name = spec[len("builtin:sample/"):]
            if name not in {p.name for p in BUILTIN_DIR.iterdir()}:
                raise DataError(f"{key}: {spec}: no such file in the sample corpus (it holds "
                                f"{', '.join(sorted(p.name for p in BUILTIN_DIR.iterdir() if _is_corpus_file(p)))})")
            files += _local(BUILTIN_DIR / name, spec, key)
        elif spec.startswith("hf://"):
            if not spec.startswith("hf://datasets/"):
                raise DataError(f"{key}: {spec}: only dataset files are supported (hf://datasets/...)")
            files += _hub(spec, key, stream)
        else:
            files += _local(Path(spec).expanduser(), spec, key)
    return files


def iter_documents(f: SourceFile, text_field: str, txt_documents: str,
                   decode: readers.DecodeStats | None = None) -> Iterator[str]:
    """Yield the documents of one source file, in file order, skipping empty ones (invalid UTF-8 bytes counted in
    `decode`)."""
    return readers.documents(f.path, f.origin, text_field, txt_documents, decode)

