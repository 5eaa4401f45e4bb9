"""One writer per run directory and per data directory; prepared data is never replaced under a run (issue #17)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, run_cli, small_recipe, wait_until, write_recipe
from test_cli_errors import assert_one_line_error
from tstcli import recipe as recipes
from tstcli.data import shards
from tstcli.prep import location


def _cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tstcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _rows(run, kind="train"):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if f'"kind": "{kind}"' in l]


@pytest.mark.slow
def test_resume_while_training_is_refused_and_the_run_stays_whole(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 5000}))
    run = tmp_path / "run"
    trainer = _cli("train", recipe, "--run-dir", run)
    wait_until((run / "metrics.jsonl").exists, "the first metrics row", trainer, timeout=300)
    r = run_cli("resume", run)
    assert_one_line_error(r, 4, str(run), "in use by pid", str(trainer.pid), "tst train")
    second = run_cli("train", recipe, "--run-dir", run)
    assert second.returncode in (2, 4) and "Traceback" not in second.stderr, second.stderr
    assert trainer.poll() is None, "the trainer finished before the checks: give it more steps"
    trainer.send_signal(signal.SIGTERM)
    out, err = trainer.communicate(timeout=600)
    assert trainer.returncode == 143, err
    steps = [x["step"] for x in _rows(run)]
    assert steps == list(range(1, steps[-1] + 1))  # every step's row, in the one file
    assert (run / "checkpoints" / f"step-{steps[-1]:08d}").is_dir()


@pytest.mark.slow
def test_two_trains_on_one_fresh_run_dir(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 30}))
    run = tmp_path / "run"
    a, b = _cli("train", recipe, "--run-dir", run), _cli("train", recipe, "--run-dir", run)
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in (a, b)]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (2, 4), results
    loser = next(err for code, err in results if code)
    assert "Traceback" not in loser and ("in use by" in loser or "already holds a run" in loser), loser
    assert [x["step"] for x in _rows(run)] == list(range(1, 31))


@pytest.mark.slow
def test_a_killed_trainer_leaves_no_lock_behind(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 200}))
    run = tmp_path / "run"
    trainer = _cli("train", recipe, "--run-dir", run)
    wait_until((run / "checkpoints" / "step-00000002" / "state.json").exists, "checkpoint 2", trainer, timeout=300)
    trainer.kill()
    trainer.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == trainer.pid  # the holder is recorded, and dead
    r = run_cli("resume", run)
    assert r.returncode == 0, r.stderr
    assert _rows(run)[-1]["step"] == 200


def test_two_prepares_on_one_empty_data_dir_both_succeed(tmp_path):
    data = tmp_path / "data"
    sets = ["--set", f'data.dir="{data}"', "--set", f'data.sources=["{SHARED / "corpus" / "kjv.txt.gz"}"]']
    procs = [_cli("prepare", ROOT / "recipes" / "tiny.toml", *sets) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    shards.verify(data, shards.read_manifest(data), full=True)
    assert not list(data.glob(".prepare-work*")) and not list((data / "packs").glob("*.tmp*"))


def test_runs_with_the_same_name_and_other_data_get_their_own_data_dirs():
    tiny = recipes.load(ROOT / "recipes" / "tiny.toml")
    other = recipes.load(ROOT / "recipes" / "tiny.toml", ['data.sources=["mydata"]'])
    assert location.data_dir(tiny) != location.data_dir(other) and str(location.data_dir(tiny)).startswith("data/tiny-")
    # keys that change how rows are read, not what is prepared, keep the directory
    same = recipes.load(ROOT / "recipes" / "tiny.toml", ["data.repeat=false", "train.steps=7"])
    assert location.data_dir(same) == location.data_dir(tiny)


@pytest.mark.slow
def test_prepared_data_is_never_replaced_under_a_run(small_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data))
    run = tmp_path / "run"
    assert run_cli("train", recipe, "--run-dir", run).returncode == 0
    before = run_cli("eval", run, "--json")
    assert before.returncode == 0, before.stderr
    # another corpus into the same data.dir: refused, naming the run; the run's data untouched
    kjv = SHARED / "corpus" / "kjv_sample.txt"
    manifest = (data / "manifest.json").read_bytes()
    for verb in ("prepare", "train"):
        r = run_cli(verb, recipe, "--set", f'data.sources=["{kjv}"]', "--run-dir", tmp_path / "other") \
            if verb == "train" else run_cli(verb, recipe, "--set", f'data.sources=["{kjv}"]')
        assert_one_line_error(r, 3, str(data), str(run.resolve()), "data.dir")
        assert (data / "manifest.json").read_bytes() == manifest
    assert not (tmp_path / "other").exists()
    after = run_cli("eval", run, "--json")
    assert json.loads(after.stdout)["heldout"] == json.loads(before.stdout)["heldout"]
    # once the run is gone, its data may be replaced
    shutil.rmtree(run)
    assert run_cli("prepare", recipe, "--set", f'data.sources=["{kjv}"]').returncode == 0


@pytest.mark.slow
def test_eval_refuses_a_run_whose_data_changed(small_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data, **{"train.steps": 2}))
    run = tmp_path / "run"
    assert run_cli("train", recipe, "--run-dir", run).returncode == 0
    m = json.loads((data / "manifest.json").read_text())
    m["sources"][0]["origin"] = "prepared again from elsewhere"
    (data / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run_cli("eval", run), 3, "manifest.json", "changed", "run.json")
    os.remove(data / "manifest.json")
    assert_one_line_error(run_cli("eval", run), 3, "manifest.json", "gone")


def test_a_new_data_key_at_its_default_keeps_the_data_dir(monkeypatch):
    """Only keys set away from their defaults name the directory: adding a key to tst keeps users' data dirs."""
    import dataclasses

    tiny = recipes.load(ROOT / "recipes" / "tiny.toml")
    before = location.data_dir(tiny)
    extended = dataclasses.make_dataclass("DataConfig", [("future_key", int, dataclasses.field(default=7))],
                                          bases=(recipes.DataConfig,), frozen=True)
    monkeypatch.setattr(recipes, "DataConfig", extended)
    assert location.data_dir(dataclasses.replace(tiny, data=extended(**dataclasses.asdict(tiny.data)))) == before
