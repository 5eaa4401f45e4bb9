"""prepare (sources, tokenizer, shards, manifest), packing and the row loader."""
import gzip
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import MOBY, ROOT, SHARED, run_cli, small_recipe, write_recipe
from tstcli.data import packing, shards
from tstcli.prep import sources
from tstcli.data.loader import batch_offsets
from tstcli.data.rows import materialise
from tstcli.prep.encode import _is_val
from tstcli.prep.prepare import prepare
from tstcli.errors import DataError


def _docs(path):
    return [json.loads(l)["text"] for l in gzip.open(path, "rt", encoding="utf-8")]


def _decode_split(data_dir, split):
    m = shards.read_manifest(data_dir)
    tok = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    ids = np.concatenate([np.fromfile(data_dir / s["file"], dtype=m["dtype"]) for s in m["splits"][split]["shards"]])
    return tok.decode(ids.tolist(), skip_special_tokens=False)


def test_round_trip_decode_equals_documents_joined_by_eot(small_data):
    eot = "<|endoftext|>"
    docs = _docs(MOBY)
    val_fraction = small_recipe(small_data).data.val_fraction
    for split in ("train", "val"):
        expected = "".join(d + eot for d in docs if _is_val(d, val_fraction) == (split == "val"))
        assert _decode_split(small_data, split) == expected
    m = shards.read_manifest(small_data)
    shards.verify(small_data, m, full=True)  # every sha256 matches
    assert m["splits"]["val"]["documents"] > 0 and m["splits"]["train"]["documents"] > 0
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(docs)
    assert m["dtype"] == "<u2" and m["vocab_size"] == 512


def test_sharding_and_every_source_kind(tmp_path):
    """txt (blank-line documents), txt.gz, jsonl, jsonl.gz with a custom field, and a directory of them."""
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("first doc line one\nline two\n\nsecond doc\n")
    with gzip.open(d / "sub" / "b.txt.gz", "wt") as fh:
        fh.write("third doc\n")
    (d / "c.jsonl").write_text(json.dumps({"body": "fourth doc"}) + "\n\n" + json.dumps({"body": "fifth"}) + "\n")
    with gzip.open(d / "sub" / "d.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"body": "sixth doc"}) + "\n")
    with gzip.open(d / "sub" / "e.json.gz", "wt") as fh:  # C4's layout: JSON lines despite the name
        fh.write(json.dumps({"body": "seventh doc"}) + "\n" + json.dumps({"body": "eighth"}) + "\n")
    files = sources.resolve([str(d)])
    docs = [x for f in files for x in sources.iter_documents(f, "body", "blank_line")]
    assert docs == ["first doc line one\nline two", "second doc", "fourth doc", "fifth", "third doc", "sixth doc",
                    "seventh doc", "eighth"]
    whole = [x for x in sources.iter_documents(sources.resolve([str(d / "a.txt")])[0], "text", "file")]
    assert whole == ["first doc line one\nline two\n\nsecond doc\n"]
    # real data, small shards: several shard files, rows never cross them
    r = small_recipe(tmp_path / "data", **{"data.sources": [str(SHARED / "corpus" / "kjv_sample.txt")],
                                          "data.shard_tokens": 50_000})
    prepare(r.data, tmp_path / "data", log=lambda *_: None)
    m = shards.read_manifest(tmp_path / "data")
    assert len(m["splits"]["train"]["shards"]) > 3
    assert all(s["tokens"] == 50_000 for s in m["splits"]["train"]["shards"][:-1])


def test_prepare_is_idempotent_and_force_rebuilds(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    before = (small_data / "manifest.json").read_bytes()
    r = run_cli("prepare", recipe)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stderr and "nothing to do" in r.stderr
    assert (small_data / "manifest.json").read_bytes() == before
    assert "phase 1:" in r.stdout and "no repetition" in r.stdout
    out = json.loads(run_cli("prepare", recipe, "--json").stdout)
    assert out["up_to_date"] is True and out["coverage"]["phases"]["1"]["tokens_needed"] == 6 * 4 * 3 * 33


def test_prepare_force_rebuilds_identically(tmp_path):
    r = small_recipe(tmp_path / "d", **{"data.sources": [str(SHARED / "corpus" / "kjv_sample.txt")]})
    prepare(r.data, tmp_path / "d", log=lambda *_: None)
    first = shards.read_manifest(tmp_path / "d")
    res = prepare(r.data, tmp_path / "d", force=True, log=lambda *_: None)
    assert not res.up_to_date
    assert shards.read_manifest(tmp_path / "d")["splits"] == first["splits"]  # deterministic


def test_loaded_tokenizer_and_missing_eot(small_data, tmp_path):
    tok = str(small_data / "tokenizer.json")
    r = small_recipe(tmp_path / "d", **{"data.tokenizer": tok, "data.sources": [str(SHARED / "corpus" / "kjv_sample.txt")]})
    prepare(r.data, tmp_path / "d", log=lambda *_: None)
    assert shards.read_manifest(tmp_path / "d")["tokenizer"]["sha256"] == \
        shards.read_manifest(small_data)["tokenizer"]["sha256"]
    bad = small_recipe(tmp_path / "e", **{"data.tokenizer": tok, "data.eot_token": "</nope>"})
    with pytest.raises(DataError, match="</nope>"):
        prepare(bad.data, tmp_path / "e", log=lambda *_: None)


def test_packing_phases_are_disjoint_and_cover_the_corpus(small_data):
    r = small_recipe(small_data, **{"train.steps": 40, "tst.ratio": 0.25})
    m = shards.read_manifest(small_data)
    info, sets = packing.split_phases(r.plan, r.run.seed, r.data.mix, m)
    rows = {p: materialise(sets[p]) for p in (1, 2)}
    w1, w2 = info["widths"][1], info["widths"][2]
    assert (w1, w2) == (3 * 33, 33)
    covered1 = {int(o) + i for o in rows[1] for i in range(w1)}
    covered2 = {int(o) + i for o in rows[2] for i in range(w2)}
    assert not covered1 & covered2, "phases must read disjoint tokens"
    assert len(rows[1]) == 10 * 4  # phase 1 takes exactly what it needs when the corpus is large enough
    assert info["covered_without_repetition"]
    # phase-1 rows come from across the corpus, not one span
    assert rows[1].max() - rows[1].min() > 0.5 * m["splits"]["train"]["tokens"]


def test_packing_reports_repetition_and_can_refuse_it(small_data):
    m = shards.read_manifest(small_data)
    r = small_recipe(small_data, **{"train.steps": 5000, "train.batch_size": 64})
    info, rows = packing.split_phases(r.plan, r.run.seed, r.data.mix, m)
    assert not info["covered_without_repetition"]
    assert info["phases"]["1"]["epochs"] > 1 and info["phases"]["2"]["epochs"] > 1
    strict = small_recipe(small_data, **{"train.steps": 5000, "train.batch_size": 64, "data.repeat": False})
    with pytest.raises(DataError, match="data.repeat"):
        packing.ensure_pack(strict.plan, strict.run.seed, strict.data, small_data, m,
                            shards.manifest_sha256(small_data))


def test_row_order_is_a_pure_function_and_ranks_partition_the_batch():
    rows = np.arange(1000, dtype=np.int64) * 7
    a, _ = batch_offsets(rows, seed=1, phase=1, step_in_phase=5, batch_size=8)
    b, _ = batch_offsets(rows, seed=1, phase=1, step_in_phase=5, batch_size=8)
    assert np.array_equal(a, b)
    parts = [batch_offsets(rows, 1, 1, 5, 8, rank=k, world=4)[0] for k in range(4)]
    assert np.array_equal(np.concatenate(parts), a)
    # one epoch visits every row exactly once, and the next epoch is a different order
    epoch0 = np.concatenate([batch_offsets(rows, 1, 1, k, 8)[0] for k in range(125)])
    assert sorted(epoch0.tolist()) == rows.tolist()
    nxt, epoch = batch_offsets(rows, 1, 1, 125, 8)
    assert epoch == 1 and not np.array_equal(nxt, epoch0[:8])
    # batches are spread over the corpus (a seeded global permutation, not adjacent rows)
    assert np.ptp(a) > 300 * 7


def test_bpe_sample_is_bounded_deterministic_ordered_and_spread():
    from tstcli.prep.tokenizer import sample_documents
    docs = [f"document {i} " + "x" * (i % 50) for i in range(2000)]
    budget = sum(map(len, docs)) // 4
    sample = sample_documents(iter(docs), budget)
    assert sum(map(len, sample)) <= budget
    assert sum(map(len, sample)) > 0.9 * budget  # the budget is used
    assert sample == sample_documents(iter(docs), budget)
    positions = [docs.index(d) for d in sample]
    assert positions == sorted(positions)  # corpus order
    assert min(positions) < 200 and max(positions) > 1800  # from across the corpus, not a prefix
    assert sample_documents(iter(docs), 10 ** 9) == docs


def test_changing_the_recipe_repacks_without_retokenizing(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    manifest = (small_data / "manifest.json").read_bytes()
    shard_mtimes = {p.name: p.stat().st_mtime_ns for p in small_data.glob("*.bin")}
    r = run_cli("prepare", recipe, "--set", "tst.bag_size=5", "--set", "train.seq_len=20", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["up_to_date"] is True  # no re-tokenization
    assert out["coverage"]["widths"] == {"1": 5 * 21, "2": 21}
    assert (small_data / "manifest.json").read_bytes() == manifest
    assert {p.name: p.stat().st_mtime_ns for p in small_data.glob("*.bin")} == shard_mtimes
    assert len(list((small_data / "packs").iterdir())) >= 2  # the new pack sits beside the old one


def test_a_document_longer_than_a_piece_tokenizes_as_the_whole(small_data, tmp_path):
    """One document of 2.4M characters (> PIECE_CHARS) is tokenized in pieces, giving exactly the whole's tokens."""
    from tstcli.prep.encode import PIECE_CHARS, pieces

    text = "\n\n".join(_docs(MOBY)) * 2
    assert len(text) > 2 * PIECE_CHARS
    cut = list(pieces(text))
    assert "".join(cut) == text and len(cut) >= 3 and all(len(p) <= PIECE_CHARS for p in cut)
    src = tmp_path / "one.jsonl"
    short = [f"short document number {i}" for i in range(20)]  # so that both splits get documents
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in [text] + short))
    data = tmp_path / "d"
    cfg = small_recipe(data, **{"data.sources": [str(src)], "data.tokenizer": str(small_data / "tokenizer.json"),
                                "data.val_fraction": 0.5}).data
    prepare(cfg, data, log=lambda *_: None)
    m = shards.read_manifest(data)
    split = "val" if _is_val(text, 0.5) else "train"
    ids = np.concatenate([np.fromfile(data / s["file"], dtype=m["dtype"]) for s in m["splits"][split]["shards"]])
    tok = Tokenizer.from_file(str(small_data / "tokenizer.json"))
    whole = tok.encode(text, add_special_tokens=False).ids
    assert sum(m["splits"][s]["documents"] for s in ("train", "val")) == 21
    assert ids[:len(whole) + 1].tolist() == whole + [m["tokenizer"]["eot_id"]]


def test_invalid_utf8_is_replaced_and_counted_once(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"a first document\n\n" + b"caf\xe9 and \xff\xfe twice\n\nthe end\n")
    r = run_cli("prepare", ROOT / "recipes" / "tiny.toml", "--set", f'data.dir="{tmp_path / "d"}"',
                "--set", f'data.sources=["{src}"]', "--set", "data.val_fraction=0.4", "--set", "data.vocab_size=300")
    warnings = [l for l in r.stderr.splitlines() if "not valid UTF-8" in l]
    assert len(warnings) == 1 and "3 bytes" in warnings[0] and "bad.txt" in warnings[0], r.stderr


def test_an_empty_corpus_says_so(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    r = run_cli("prepare", ROOT / "recipes" / "tiny.toml", "--set", f'data.dir="{tmp_path / "d"}"',
                "--set", f'data.sources=["{tmp_path / "empty.txt"}"]')
    assert r.returncode == 3 and "hold no documents" in r.stderr and "val_fraction" not in r.stderr, r.stderr
