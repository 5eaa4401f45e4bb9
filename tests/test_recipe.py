"""Recipe parsing: frozen dataclasses, overrides, validation, the documented key table."""
import dataclasses
import re

import pytest

from conftest import ROOT
from tstcli import recipe as recipes
from tstcli.errors import UsageError


def test_every_shipped_recipe_parses_and_round_trips(tmp_path):
    for path in (ROOT / "recipes").glob("*.toml"):
        r = recipes.load(path)
        again = tmp_path / "again.toml"
        again.write_text(recipes.to_toml(r))
        assert recipes.load(again) == r


def test_recipe_is_frozen():
    r = recipes.load(ROOT / "recipes" / "tiny.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.steps = 5


def test_overrides_use_toml_values_and_bare_strings():
    r = recipes.load(ROOT / "recipes" / "tiny.toml", ["train.steps=17", "tst.mode=input", 'run.name="x"',
                                                      "train.lr=1e-4", 'data.sources=["a.txt", "b.jsonl"]'])
    assert (r.train.steps, r.tst.mode, r.run.name, r.train.lr) == (17, "input", "x", 1e-4)
    assert r.data.sources == ["a.txt", "b.jsonl"]
    with pytest.raises(UsageError, match="key.path=value"):
        recipes.load(ROOT / "recipes" / "tiny.toml", ["train.steps"])


def test_phase_split():
    r = recipes.load(ROOT / "recipes" / "tiny.toml", ["train.steps=10", "tst.ratio=0.25"])
    assert r.plan.phase1_steps == 2  # round(2.5) -> 2 (banker's rounding, documented as round())
    assert [r.plan.phase_at(s) for s in range(1, 11)] == [1, 1] + [2] * 8
    r0 = recipes.load(ROOT / "recipes" / "tiny.toml", ["tst.ratio=0"])
    assert r0.plan.phase1_steps == 0 and r0.plan.phase_at(1) == 2


@pytest.mark.parametrize("override,needle", [
    ("train.micro_batch_size=5", "train.micro_batch_size"),
    ("model.n_kv_heads=3", "model.n_kv_heads"),
    ("train.lr=0", "train.lr"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("train.dtype=fp16", "train.dtype"),
    ("train.compile=1", "train.compile"),
    ("run.name=a/b", "run.name"),
    ("train.loss_chunk_size=-1", "train.loss_chunk_size"),
    ("train.loss_chunk_size=2000000", "train.loss_chunk_size"),
    ('tst.loss="focal"', "tst.loss"),
])
def test_validation_names_the_key(override, needle):
    with pytest.raises(UsageError, match=re.escape(needle)):
        recipes.load(ROOT / "recipes" / "tiny.toml", [override])


def test_recipes_readme_documents_every_key():
    text = (ROOT / "recipes" / "README.md").read_text()
    table = re.search(r"<!-- keys -->\n(.*)\n<!-- /keys -->", text, re.S).group(1)
    assert table == recipes.key_table(), "recipes/README.md is stale: regenerate with `python -m tstcli.recipe`"
