"""Every ablation recipe parses and plans through `tst train --dry-run` (the comparison itself is the benchmark in
benchmarks/RESULTS.md). What each ablation changes in the math is tested where that math lives: the losses (BCE,
hinge, weighted MCE) in test_head_loss.py and test_tst_math.py, the modes, the re-initialisations and the reset at
the switch in test_training.py."""
import json

import pytest

from conftest import ROOT, run_cli
from tstcli import recipe as recipes

ABLATIONS = sorted((ROOT / "recipes" / "ablations").glob("*.toml"))


def test_the_paper_ablations_are_all_there():
    names = {p.stem for p in ABLATIONS}
    assert {"baseline", "s2", "s4", "s8", "s16", "ratio-0.2", "ratio-0.4", "input-only", "output-only", "weighted",
            "reinit-embedding", "reinit-head", "bce", "hinge"} <= names


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_recipe_parses_and_plans_through_the_cli(path, tmp_path):
    r = recipes.load(path)
    assert r.run.name == f"ablation-{path.stem}"
    out = run_cli("train", path, "--dry-run", "--json", cwd=tmp_path)  # its relative data.dir: nothing is written
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr  # e.g. a warmup as long as the run
    plan = json.loads(out.stdout)
    phases = plan["phases"]
    assert phases["1"]["steps"] == r.phase1_steps and phases["1"]["steps"] + phases["2"]["steps"] == r.train.steps
    assert (phases["1"]["steps"] == 0) == (r.tst.bag_size == 1 or r.tst.ratio == 0)
    assert phases["2"]["row_tokens"] == r.train.seq_len + 1
    if phases["1"]["steps"]:
        assert phases["1"]["row_tokens"] > phases["2"]["row_tokens"]
    assert plan["vocab_size"] == r.data.vocab_size and plan["devices"]["1"]["memory_gib"]["total"] > 0
    assert list(tmp_path.iterdir()) == []
