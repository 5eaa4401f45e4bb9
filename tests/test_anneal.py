"""`tst anneal RUN --step N --decay-steps K`: a new run from step N of a WSD run, decaying over K steps on the data
the parent would have read next; the parent only read; a resume inside the decay bitwise; bad steps exit 2."""
import json

import pytest

from conftest import resumed_from, _fingerprint, run_cli, small_recipe, write_recipe
from test_resume import SHARD, assert_same_tensors, train_losses
from tstcli.schedule import decay_factor

N, K = 10, 6  # the parent: 24 steps, warmup 2, decay over the last 6 (steps 19-24), switch after step 12


def rows(run, kind="train"):
    return {r["step"]: r for r in (json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == kind}


@pytest.fixture(scope="module")
def parent(small_data, tmp_path_factory):
    """A Muon run with the sqrt decay shape: the anneal carries both optimizers' states and the shape."""
    tmp = tmp_path_factory.mktemp("anneal")
    recipe = write_recipe(tmp / "r.toml", small_recipe(small_data, **{
        "train.steps": 24, "train.decay_fraction": 0.25, "train.decay_shape": "sqrt", "train.min_lr_ratio": 0.1,
        "train.optimizer": "muon", "checkpoint.every": 2, "eval.every": 5}))
    r = run_cli("train", recipe, "--run-dir", tmp / "p")
    assert r.returncode == 0, r.stderr
    return tmp / "p"


@pytest.fixture(scope="module")
def annealed(parent):
    before = _fingerprint(parent)
    child = parent.parent / "a"
    r = run_cli("anneal", parent, "--step", N, "--decay-steps", K, "--run-dir", child)
    assert r.returncode == 0, r.stderr
    assert _fingerprint(parent) == before, "the source run is only read"
    return child, r


def test_anneal_continues_the_parent_on_its_data_and_decays(parent, annealed):
    child, r = annealed
    assert f"anneal: {child} from step-{N:08d} of {parent}" in r.stderr
    info = json.loads((child / "run.json").read_text())
    assert info["parent"] == {"run": str(parent.resolve()), "step": N, "decay_steps": K}
    p, a = rows(parent), rows(child)
    assert sorted(a) == list(range(1, N + K + 1))
    assert all(a[s] == p[s] for s in range(1, N + 1)), "the parent's log up to N, as it was"
    assert a[N + 1]["loss"] == p[N + 1]["loss"], "step N+1: the parent's batch from the parent's state, bitwise"
    assert a[N + 2]["loss"] != p[N + 2]["loss"]  # the learning rate of step N+1 differed
    for s in range(N + 1, N + K + 1):  # the decay formula, sqrt shape, over K steps from N
        want = 3e-3 * decay_factor("sqrt", (s - N) / (K + 1), 0.1)
        assert a[s]["lr"] == pytest.approx(want, rel=1e-12), s
    assert a[12]["phase"] == 1 and a[13]["phase"] == 2, "the parent's phase plan and switch"
    assert rows(child, "val")[N + K]["val_loss"] < rows(child, "val")[N]["val_loss"]
    assert json.loads((child / "checkpoints" / f"step-{N + K:08d}" / "state.json").read_text())["step"] == N + K


@pytest.mark.slow
def test_resume_inside_the_anneals_decay_is_bitwise(annealed, tmp_path):
    child, _ = annealed
    b = tmp_path / "b"
    r = resumed_from(child, b, N + 2)
    assert r.returncode == 0, r.stderr
    assert train_losses(b) == train_losses(child)
    final = f"checkpoints/step-{N + K:08d}/" + SHARD
    assert_same_tensors(b / final, child / final)


def test_compare_draws_the_anneal_as_a_branch_of_its_parent(parent, annealed, tmp_path):
    child, _ = annealed
    r = run_cli("compare", parent, child, "--json", "--out", tmp_path / "c.svg")
    assert r.returncode == 0, r.stderr
    runs = {x["run"]: x for x in json.loads(r.stdout)["runs"]}
    assert runs["a"]["branch_of"] == str(parent.resolve()) and runs["p"]["branch_of"] is None
    assert runs["a"]["label"] == f"anneal of p @{N}"
    assert runs["a"]["branch_x"] == rows(parent)[N]["flops"]
    assert (tmp_path / "c.svg").stat().st_size > 0


@pytest.mark.parametrize("args,needle", [
    (["--step", 20, "--decay-steps", 2], "step 20 is inside the decay"),
    (["--step", 1, "--decay-steps", 2], "step 1 is inside the warmup"),
    (["--step", 9, "--decay-steps", 2], "--step 9: "),  # no checkpoint of step 9 (every 2)
    (["--step", 16, "--decay-steps", 10], "ends past train.steps (24)"),
    (["--step", 10, "--decay-steps", 0], "at least 1 step"),
], ids=["in-decay", "in-warmup", "no-checkpoint", "past-the-end", "no-decay"])
def test_a_bad_anneal_step_is_one_line_exit_2(parent, tmp_path, args, needle):
    r = run_cli("anneal", parent, *args, "--run-dir", tmp_path / "x")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists(), "nothing written"


def test_anneal_of_a_cosine_run_or_an_anneal_is_refused(small_data, annealed, tmp_path):
    child, _ = annealed
    r = run_cli("anneal", child, "--step", N, "--decay-steps", 2, "--run-dir", tmp_path / "y")
    assert r.returncode == 2 and "is itself an anneal" in r.stderr and not (tmp_path / "y").exists()
    recipe = write_recipe(tmp_path / "c.toml", small_recipe(small_data, **{"train.schedule": "cosine",
                                                                           "train.steps": 4}))
    assert run_cli("train", recipe, "--run-dir", tmp_path / "cos").returncode == 0
    r = run_cli("anneal", tmp_path / "cos", "--step", 2, "--decay-steps", 1)
    assert r.returncode == 2 and "only a wsd run" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "cos-anneal-2+1").exists()


def test_anneal_into_a_directory_holding_files_is_refused(parent, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    r = run_cli("anneal", parent, "--step", N, "--decay-steps", 2, "--run-dir", tmp_path / "x")
    assert r.returncode == 2 and "not empty" in r.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]



@pytest.mark.slow
def test_anneal_under_torchrun_equals_one_process(parent, annealed, tmp_path):
    """Rank 0 writes the branch while the other ranks wait; then every rank trains its share (DDP, Muon)."""
    from test_distributed import torchrun
    child, _ = annealed
    r = torchrun(2, "anneal", parent, "--step", N, "--decay-steps", K, "--run-dir", tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("anneal: ") == 1 and r.stdout.count("final held-out loss") == 1
    one, two = rows(child), rows(tmp_path / "two")
    assert sorted(one) == sorted(two)
    assert all(abs(one[s]["loss"] - two[s]["loss"]) < 1e-4 for s in one), "summation order only"
