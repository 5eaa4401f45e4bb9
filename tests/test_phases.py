"""The phase plan: one object says how the steps split into phases and how wide each phase's rows are; the dry run
and the trainer read it."""
from pathlib import Path

import numpy as np
import pytest

from conftest import small_recipe
from tstcli import recipe as recipes
from tstcli.phases import PhasePlan
from tstcli.train.dryrun import memory_per_device
from tstcli.train.session import local_trainer

ROOT = Path(__file__).resolve().parents[1]


def _plan(*overrides) -> PhasePlan:
    return recipes.load(ROOT / "recipes" / "tiny.toml", ["train.steps=10", "tst.ratio=0.3", "train.seq_len=8",
                                                         "tst.bag_size=4", "train.batch_size=2", "eval.batches=3",
                                                         *overrides]).plan


@pytest.mark.parametrize("mode,row1,k,m", [("full", 4 * 9, 4, 4), ("input", 4 * 9, 4, 1), ("output", 2 * 9, 1, 4)])
def test_plan_geometry_per_mode(mode, row1, k, m):
    p = _plan(f"tst.mode={mode}")
    assert (p.phase1_steps, p.phase_steps, p.switch_step) == (3, {1: 3, 2: 7}, 4)
    assert p.row_widths == {1: row1, 2: 9} and (p.phase1.input_width, p.phase1.target_width) == (k, m)
    assert (p.heldout.row_width, p.heldout_count, p.rows_needed) == (9, 6, {1: 6, 2: 14})
    assert [p.phase_at(s) for s in range(1, 11)] == [1] * 3 + [2] * 7
    assert [p.step_in_phase(s) for s in range(1, 11)] == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]


def test_no_switch_when_a_phase_is_empty():
    assert _plan("tst.ratio=0").switch_step is None and _plan("tst.ratio=0.99").switch_step is None


def test_the_recipe_builds_its_plan_once():
    r = recipes.load(ROOT / "recipes" / "tiny.toml")
    assert r.plan is r.plan


@pytest.mark.parametrize("mode,per_position", [("full", 4), ("input", 4), ("output", 1)])
def test_dry_run_bag_memory_counts_the_tokens_averaged_per_position(mode, per_position):
    """Phase 1 gathers one fp32 embedding per input token of a position: s of them in the full and input modes, one
    in the output mode (its input is a single token; only its target is a bag)."""
    r = recipes.load(ROOT / "recipes" / "tiny.toml", [f"tst.mode={mode}", "tst.bag_size=4"])
    got = memory_per_device(r, 10**6, 10**5, 4096, 1)["bags"]
    positions = r.train.rows_per_micro_batch(1) * r.train.seq_len
    assert got == round(positions * per_position * r.model.dim * 4 / 2**30, 3)


def test_the_trainer_refuses_a_batch_of_another_width(small_data, tmp_path):
    """A loader handing rows of the wrong width would be scored as other tokens without an error (a view still
    reshapes): the trainer checks every batch against the plan."""
    t = local_trainer(small_recipe(small_data), tmp_path, hooks=[])
    loader = t.loaders[1]
    real = loader.batch
    loader.batch = lambda *a: (lambda rows, epoch: (np.concatenate([rows, rows[:, :1]], axis=1), epoch))(*real(*a))
    with pytest.raises(ValueError, match=r"phase 1: a batch of shape \(4, 100\), but the phase plan's rows are 99 "):
        t.train_step(1)
