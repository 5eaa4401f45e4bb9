"""Weighted mixtures (`[[data.mix]]`): the rows a run reads realise the weights per phase, the phases stay disjoint,
resume is bitwise, a new weight re-packs without re-tokenizing, the coverage report names the entry that repeats,
and bad mixtures fail with one line naming the key."""
import json
import shutil

import numpy as np
import pytest

from conftest import MOBY, ROOT, SHARED, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from test_resume import assert_same_tensors, train_losses
from tstcli.data import packing, shards
from tstcli.prep import location
from tstcli.data.loader import select_heldout_rows
from tstcli.data.rows import materialise
from tstcli.recipe import from_dict, to_dict

KJV = SHARED / "corpus" / "kjv_sample.txt"
SHARD = "shard-00001-model-00001-of-00001.safetensors"


def mixture(data_dir, tokenizer, entries, **overrides):
    """The SMALL recipe reading `entries` [(name, sources, weight, phase1_weight, phase2_weight)], 40 steps of 8 rows
    (160 rows per phase: weights are realised to within 0.5/160 of a share)."""
    r = small_recipe(data_dir, **{"train.steps": 40, "train.batch_size": 8, "checkpoint.every": 10,
                                  "eval.every": 20, **overrides})
    table = to_dict(r)
    table["data"].update(tokenizer=str(tokenizer), sources=["unused"], mix=[
        {"name": n, "sources": [str(s) for s in src], "weight": w,
         **({"phase1_weight": w1} if w1 is not None else {}), **({"phase2_weight": w2} if w2 is not None else {})}
        for n, src, w, w1, w2 in entries])
    return from_dict(table, "test recipe")


@pytest.fixture(scope="module")
def mix_data(small_data, tmp_path_factory):
    """Moby-Dick and the KJV sample prepared once as a two-entry mixture (the Moby BPE, no tokenizer training)."""
    tmp = tmp_path_factory.mktemp("mix")
    recipe = write_recipe(tmp / "r.toml", mixture(tmp / "data", small_data / "tokenizer.json",
                                                  [("moby", [MOBY], 0.7, None, None), ("kjv", [KJV], 0.3, None, None)]))
    r = run_cli("prepare", recipe, "--json")
    assert r.returncode == 0, r.stderr
    return tmp / "data", small_data / "tokenizer.json", json.loads(r.stdout)


def _rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(tmp, name, recipe_obj, *extra):
    recipe = write_recipe(tmp / f"{name}.toml", recipe_obj)
    r = run_cli("train", recipe, "--run-dir", tmp / name, *extra)
    assert r.returncode == 0, r.stderr
    return recipe, tmp / name


def _phase_shares(rows, phase1_steps):
    train = [r for r in rows if r["kind"] == "train"]
    for r in train:  # every raw token read is counted under one entry
        assert sum(r["mix_tokens"].values()) == r["tokens"], r
    at_switch, end = train[phase1_steps - 1]["mix_tokens"], train[-1]["mix_tokens"]
    got = {1: at_switch, 2: {k: end[k] - at_switch[k] for k in end}}
    return {p: {k: v / sum(t.values()) for k, v in t.items()} for p, t in got.items()}, got


def _entry_of(offsets, info):
    starts = np.array([e["start"] for e in info["mix"]])
    return np.searchsorted(starts, offsets, side="right") - 1


@pytest.mark.parametrize("weights", [
    pytest.param({"moby": (0.7, None, None), "kjv": (0.3, None, None)}, id="0.7-0.3"),
    pytest.param({"moby": (1.0, 0.5, 0.9), "kjv": (1.0, 0.5, 0.1)}, id="per-phase-0.5-0.5-then-0.9-0.1"),
])
def test_rows_read_realise_the_weights_per_phase_and_phases_are_disjoint(mix_data, tmp_path, weights):
    data, tok, _ = mix_data
    r = mixture(data, tok, [(n, [MOBY if n == "moby" else KJV], *w) for n, w in weights.items()])
    _, run = _train(tmp_path, "run", r)
    shares, tokens = _phase_shares(_rows(run), r.plan.phase1_steps)
    for p in (1, 2):
        total = sum(e.weight_in(p) for e in r.data.mix)
        for e in r.data.mix:
            assert abs(shares[p][e.name] - e.weight_in(p) / total) <= 0.01, (p, e.name, shares[p])

    # The counts agree with the pack, read independently: each phase reads its pack's rows exactly once.
    manifest = shards.read_manifest(data)
    pack, _ = packing.ensure_pack(r.plan, r.run.seed, r.data, data, manifest, shards.manifest_sha256(data))
    rows = {p: materialise(pack.rows[p]) for p in (1, 2)}
    for p in (1, 2):
        counts = np.bincount(_entry_of(rows[p], pack.info), minlength=2) * pack.widths[p]
        assert {e["name"]: int(c) for e, c in zip(pack.info["mix"], counts)} == tokens[p]

    # Disjoint: no training token is in a phase-1 row and a phase-2 row.
    covered = {p: np.zeros(manifest["splits"]["train"]["tokens"], bool) for p in (1, 2)}
    for p in (1, 2):
        for o in np.unique(rows[p]):
            covered[p][o:o + pack.widths[p]] = True
    assert not (covered[1] & covered[2]).any()
    # and each entry's rows lie inside its own shards
    for p in (1, 2):
        ends = np.array([e["end"] for e in pack.info["mix"]])
        assert (rows[p] + pack.widths[p] <= ends[_entry_of(rows[p], pack.info)]).all()


@pytest.mark.slow
def test_mixture_resume_is_bitwise(mix_data, tmp_path):
    data, tok, _ = mix_data
    r = mixture(data, tok, [("moby", [MOBY], 1.0, 0.5, 0.9), ("kjv", [KJV], 1.0, 0.5, 0.1)])
    _, a = _train(tmp_path, "a", r)
    for stop_at in (10, 30):  # in phase 1, in phase 2
        b = tmp_path / f"b{stop_at}"
        shutil.copytree(a, b)
        for ckpt in (b / "checkpoints").iterdir():
            if int(ckpt.name.split("-")[1]) > stop_at:
                shutil.rmtree(ckpt)
        res = run_cli("resume", b)
        assert res.returncode == 0, res.stderr
        assert train_losses(b) == train_losses(a)
        mix = lambda run: [x["mix_tokens"] for x in _rows(run) if x["kind"] == "train"]  # noqa: E731
        assert mix(b) == mix(a)
        final = "checkpoints/step-00000040/" + SHARD
        assert_same_tensors(b / final, a / final)


def test_changing_a_weight_repacks_without_retokenizing(mix_data, tmp_path):
    data, tok, first = mix_data
    before = {p.name: p.stat().st_mtime_ns for p in data.glob("*.bin")}
    manifest = (data / "manifest.json").read_bytes()
    recipe = write_recipe(tmp_path / "r.toml", mixture(data, tok, [("moby", [MOBY], 0.5, None, None),
                                                                   ("kjv", [KJV], 0.5, None, None)]))
    r = run_cli("prepare", recipe, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["up_to_date"] and out["pack_built"] and out["pack"] != first["pack"]
    assert "tokenizing" not in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("*.bin")} == before
    assert (data / "manifest.json").read_bytes() == manifest
    assert [e["phases"]["2"]["weight"] for e in out["coverage"]["mix"]] == [0.5, 0.5]
    # Without data.dir, the default directory does not depend on the weights either.
    a, b = (mixture(data, tok, [("moby", [MOBY], w, None, None), ("kjv", [KJV], 1 - w, None, None)],
                    **{"data.dir": ""}) for w in (0.3, 0.6))
    assert location.data_dir(a) == location.data_dir(b)


def test_heldout_rows_follow_the_weights(mix_data):
    data, tok, _ = mix_data
    r = mixture(data, tok, [("moby", [MOBY], 0.75, None, None), ("kjv", [KJV], 0.25, None, None)])
    manifest = shards.read_manifest(data)
    val = shards.TokenStore(data, manifest, "val")
    rows = select_heldout_rows(val, r.plan, r.data.mix, manifest["mix"])
    assert len(rows) == r.plan.heldout_count
    width = r.train.seq_len + 1
    own = {}
    for m in manifest["mix"]:
        toks = np.concatenate([np.fromfile(data / s["file"], dtype=manifest["dtype"]) for s in
                               manifest["splits"]["val"]["shards"][m["val"]["first"]:][:m["val"]["count"]]])
        own[m["name"]] = {tuple(toks[i:i + width]) for i in range(0, len(toks) - width + 1, width)}
    counts = {n: sum(tuple(x) in rows_of for x in rows) for n, rows_of in own.items()}
    assert counts == {"moby": round(0.75 * len(rows)), "kjv": round(0.25 * len(rows))}


def test_coverage_names_the_entry_that_repeats(small_data, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text(KJV.read_text()[:12_000])  # far fewer tokens than half of phase 1's rows
    r = mixture(tmp_path / "data", small_data / "tokenizer.json",
                [("moby", [MOBY], 0.5, None, None), ("tiny", [tiny], 0.5, None, None)])
    recipe = write_recipe(tmp_path / "r.toml", r)
    out = run_cli("prepare", recipe)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(l.startswith("mix tiny: phase 1") and "(repeats)" in l for l in lines), out.stdout
    assert any(l.startswith("mix moby: phase 1") and "no repetition" in l for l in lines), out.stdout
    assert "too small for their weights, repeated (data.repeat): tiny" in out.stdout
    dry = run_cli("train", recipe, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "coverage: mix tiny: phase 1" in dry.stdout and "(repeats)" in dry.stdout
    strict = run_cli("prepare", recipe, "--set", "data.repeat=false")
    assert_one_line_error(strict, 3, "'tiny'", "data.repeat")
    assert "'moby'" not in strict.stderr


@pytest.mark.parametrize("mix,needle", [
    ('[{name = "a", sources = ["x"], weight = 0}]', "data.mix[0].weight"),
    ('[{name = "a", sources = ["x"], weight = -0.3}]', "data.mix[0].weight"),
    ('[{name = "a", sources = ["x"], weight = "heavy"}]', "data.mix[0].weight"),
    ('[{name = "a", sources = ["x"], weight = 1}, {name = "b", sources = ["x"], phase1_weight = 1}]',
     "data.mix[1].weight"),
    ('[{name = "a", sources = ["x"], weight = 1, phase2_weight = -1}]', "data.mix[0].phase2_weight"),
    ('[{name = "a", sources = ["x"], weight = 1, phase1_weight = 0}]', "phase1_weight"),
    ('[{name = "a/b", sources = ["x"], weight = 1}]', "data.mix[0].name"),
    ('[{name = "a", sources = [], weight = 1}]', "data.mix[0].sources"),
    ("[]", "data.mix"),
])
def test_bad_mixtures_are_one_line_naming_the_key(tmp_path, mix, needle):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[run]\nname = "m"\n[data]\ndir = "{tmp_path / "data"}"\nmix = {mix}\n')
    r = run_cli("prepare", recipe)
    assert_one_line_error(r, 2, needle)
    assert not (tmp_path / "data").exists()


def test_an_empty_entry_is_named_and_leaves_nothing_behind(small_data, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = mixture(tmp_path / "data", small_data / "tokenizer.json",
                [("moby", [MOBY], 0.5, None, None), ("blank", [empty], 0.5, None, None)])
    out = run_cli("prepare", write_recipe(tmp_path / "r.toml", r))
    assert_one_line_error(out, 3, "data.mix[1].sources", "'blank'")
    assert not (tmp_path / "data" / "manifest.json").exists()
    assert not list((tmp_path / "data").glob("*.bin")) and not (tmp_path / "data" / ".prepare-work").exists()


@pytest.mark.slow
def test_the_example_recipe_trains_on_the_shipped_corpus(tmp_path):
    """recipes/mixture.toml: two files of the sample corpus inside the package, weighted per phase."""
    sets = ["data.vocab_size=512", f'data.dir="{tmp_path / "data"}"', "train.steps=20", "train.batch_size=4",
            "train.compile=false", "eval.every=20", "checkpoint.every=20", "model.dim=32", "model.n_layers=1"]
    args = [a for s in sets for a in ("--set", s)]
    out = run_cli("train", ROOT / "recipes" / "mixture.toml", "--run-dir", tmp_path / "run", *args)
    assert out.returncode == 0, out.stderr
    rows = [r for r in _rows(tmp_path / "run") if r["kind"] == "train"]
    assert len(rows) == 20 and all(set(r["mix_tokens"]) == {"moby", "bible"} for r in rows)
    last = rows[-1]["mix_tokens"]
    assert last["moby"] > last["bible"] > 0  # phase 2 reads Moby-Dick 80/20


def test_builtin_sample_file_names_one_file_or_fails_naming_it(tmp_path):
    from tstcli.prep import sources
    assert [f.origin for f in sources.resolve(["builtin:sample/kjv.txt.gz"])] == ["builtin:sample/kjv.txt.gz"]
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ndir = "{tmp_path / "d"}"\n[[data.mix]]\nname = "a"\n'
                      'sources = ["builtin:sample/nope.txt"]\nweight = 1\n')
    assert_one_line_error(run_cli("prepare", recipe), 3, "data.mix[0].sources", "builtin:sample/nope.txt",
                          "kjv.txt.gz")
