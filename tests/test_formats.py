"""Corpus formats: the same documents as txt, jsonl, jsonl.gz, jsonl.zst and Parquet prepare to identical shards;
damaged files are one line naming them (issue #15)."""
import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import MOBY, ROOT, run_cli, small_recipe
from test_cli_errors import assert_one_line_error
from tstcli.prep.prepare import prepare

TINY = ROOT / "recipes" / "tiny.toml"


def _moby_docs():
    with gzip.open(MOBY, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def _write(fmt: str, docs: list[str], where) -> str:
    """`docs` in format `fmt` under `where`; the source string for data.sources."""
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    if fmt == "txt":  # one document per file (their text holds blank lines), in sorted order
        d = where / "txt"
        d.mkdir()
        for i, doc in enumerate(docs):
            (d / f"doc-{i:05d}.txt").write_text(doc, encoding="utf-8")
        return str(d)
    path = where / {"jsonl": "c.jsonl", "jsonl.gz": "c.jsonl.gz", "jsonl.zst": "c.jsonl.zst",
                    "jsonl.zstd": "c_processed.jsonl.zstd", "parquet": "c.parquet"}[fmt]
    if fmt == "jsonl":
        path.write_bytes(lines)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(lines))
    elif fmt in ("jsonl.zst", "jsonl.zstd"):
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    else:  # several row groups, as real Parquet files have
        pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=40)
    return str(path)


def test_every_format_prepares_to_identical_shards(small_data, tmp_path):
    docs = _moby_docs()
    digests = {}
    for fmt in ("txt", "jsonl", "jsonl.gz", "jsonl.zst", "jsonl.zstd", "parquet"):
        where = tmp_path / fmt.replace(".", "_")
        where.mkdir()
        overrides = {"data.sources": [_write(fmt, docs, where)], "data.tokenizer": str(small_data / "tokenizer.json")}
        if fmt == "txt":
            overrides["data.txt_documents"] = "file"
        cfg = small_recipe(where / "data", **overrides).data
        m = prepare(cfg, where / "data", log=lambda *_: None).manifest
        # Shards are cut per work unit (one per file here), so compare each split's token stream, in manifest order.
        digests[fmt] = {s: hashlib.sha256(b"".join((where / "data" / x["file"]).read_bytes()
                                                   for x in m["splits"][s]["shards"])).hexdigest()
                        for s in ("train", "val")}
        assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(docs)
    assert all(d == digests["jsonl"] for d in digests.values()), digests


def _prepare(tmp_path, source, *sets):
    args = ["prepare", TINY, "--set", f'data.dir="{tmp_path / "d"}"', "--set", f'data.sources=["{source}"]']
    for s in sets:
        args += ["--set", s]
    return run_cli(*args)


def test_damaged_parquet_and_zstd_files_exit_3(tmp_path):
    docs = _moby_docs()[:50]
    good = _write("parquet", docs, tmp_path)
    raw = open(good, "rb").read()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(raw[: len(raw) // 2])  # truncated: the footer is gone
    assert_one_line_error(_prepare(tmp_path, bad), 3, "bad.parquet", "Parquet")
    z = bytearray(open(_write("jsonl.zst", docs, tmp_path), "rb").read())
    for i in range(len(z) // 2, len(z) // 2 + 16):
        z[i] ^= 0xFF
    badz = tmp_path / "bad.jsonl.zst"
    badz.write_bytes(bytes(z))
    assert_one_line_error(_prepare(tmp_path, badz), 3, "bad.jsonl.zst")
    assert not (tmp_path / "d" / ".prepare-work").exists() and not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize("column,needles", [("body", ["no column 'text'", "data.text_field", "body"]),
                                            ("text", ["column 'text'", "not text"])])
def test_parquet_without_a_text_column_exits_3(tmp_path, column, needles):
    values = ["some text"] * 10 if column == "body" else list(range(10))
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({column: values}), path)
    assert_one_line_error(_prepare(tmp_path, path), 3, "c.parquet", *needles)


@pytest.mark.parametrize("module,fmt", [("zstandard", "jsonl.zst"), ("pyarrow", "parquet")])
def test_a_missing_optional_reader_names_the_extra(tmp_path, module, fmt):
    import subprocess
    import sys

    source = _write(fmt, _moby_docs()[:5], tmp_path)
    code = (f"import sys; sys.modules[{module!r}] = None\n"  # as if not installed: importing it raises ImportError
            "from tstcli.cli.app import main\n"
            f"main(['prepare', {str(TINY)!r}, '--set', 'data.dir=\"{tmp_path / 'd'}\"', "
            f"'--set', 'data.sources=[\"{source}\"]'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert_one_line_error(r, 3, source.split("/")[-1], module, "tst[data]")


def test_a_truncated_compressed_corpus_exits_3_saying_truncated(tmp_path):
    """Issue 29 (5): a file cut short is never read as a shorter corpus, wherever the cut falls."""
    lines = [(json.dumps({"text": d}) + "\n").encode() for d in _moby_docs()[:60]]
    frames = [zstandard.ZstdCompressor().compress(b"".join(lines[a:a + 10])) for a in range(0, 60, 10)]
    whole = b"".join(frames)
    boundary = sum(map(len, frames[:3]))  # three whole frames: 30 whole documents, then the cut
    cuts = {"a few bytes into a frame": boundary + 3, "mid-frame": boundary + len(frames[3]) // 2,
            "the last byte": len(whole) - 1}
    for where, cut in cuts.items():
        bad = tmp_path / "cut.jsonl.zst"
        bad.write_bytes(whole[:cut])
        r = _prepare(tmp_path, bad)
        assert r.returncode == 3, (where, r.returncode, r.stderr[-500:])
        assert_one_line_error(r, 3, "cut.jsonl.zst", "truncated")
    assert not (tmp_path / "d" / "manifest.json").exists()
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(lines))[:-20])
    assert_one_line_error(_prepare(tmp_path, gz), 3, "cut.jsonl.gz", "truncated")
    # an intact file of several frames reads whole
    (tmp_path / "ok.jsonl.zst").write_bytes(whole)
    from tstcli.prep.readers import documents
    assert len(list(documents(str(tmp_path / "ok.jsonl.zst"), "ok", "text", "blank_line"))) == 60
