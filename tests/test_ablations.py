"""Every ablation recipe parses and plans through `tst train --dry-run` (the comparison itself is the benchmark in
benchmarks/RESULTS.md). What each ablation changes in the math is tested where that math lives: the losses (BCE,
hinge, weighted MCE) in test_head_loss.py and test_tst_math.py, the modes, the re-initialisations and the reset at
the switch in test_training.py."""
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest

from conftest import ROOT
from tstcli import recipe as recipes
from tstcli.cli.app import main

ABLATIONS = sorted((ROOT / "recipes" / "ablations").glob("*.toml"))


def test_the_paper_ablations_are_all_there():
    names = {p.stem for p in ABLATIONS}
    assert {"baseline", "s2", "s4", "s8", "s16", "ratio-0.2", "ratio-0.4", "input-only", "output-only", "weighted",
            "reinit-embedding", "reinit-head", "bce", "hinge"} <= names


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_recipe_parses_and_plans_through_the_cli(path, tmp_path):
    r = recipes.load(path)
    assert r.run.name == f"ablation-{path.stem}"
    # The real CLI's entry point (`tst` is tstcli.cli.app:main), in this process as in fuzz_recipes.py: a `tst`
    # process would spend ~3 s importing torch, per recipe. In tmp_path: the recipe's data.dir is relative.
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(tmp_path)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main(["train", str(path), "--dry-run", "--json"])
    except SystemExit as e:
        assert e.code in (0, None), (e.code, err.getvalue())
    finally:
        os.chdir(cwd)
    assert "warning" not in err.getvalue(), err.getvalue()  # e.g. a warmup as long as the run
    plan = json.loads(out.getvalue())
    phases = plan["phases"]
    assert phases["1"]["steps"] == r.plan.phase1_steps and phases["1"]["steps"] + phases["2"]["steps"] == r.train.steps
    assert (phases["1"]["steps"] == 0) == (r.tst.bag_size == 1 or r.tst.ratio == 0)
    assert phases["2"]["row_tokens"] == r.train.seq_len + 1
    if phases["1"]["steps"]:
        assert phases["1"]["row_tokens"] > phases["2"]["row_tokens"]
    assert plan["vocab_size"] == r.data.vocab_size and plan["devices"]["1"]["memory_gib"]["total"] > 0
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
