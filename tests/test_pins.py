"""Readers never race the trainer: a checkpoint being read is not pruned (the trainer does not wait for it either),
and a reader whose checkpoint is pruned before it pins it takes the newest one."""
import json
import subprocess
import sys
import time

import pytest

from conftest import run_cli, small_recipe, write_recipe
from tstcli.run import checkpoint, pins


def _fake_checkpoint(root, step):
    d = root / f"step-{step:08d}"
    d.mkdir(parents=True)
    (d / checkpoint.STATE).write_text(json.dumps({"files": ["w.safetensors"]}))
    (d / checkpoint.RECIPE).write_text("")
    pins.make(d)
    return d


def test_a_pinned_checkpoint_survives_pruning_until_its_reader_is_done(tmp_path):
    first = _fake_checkpoint(tmp_path, 1)
    _fake_checkpoint(tmp_path, 2)
    newest = _fake_checkpoint(tmp_path, 3)
    with pins.reading(lambda: checkpoint.find(tmp_path, 1)) as held:
        assert held == first
        t0 = time.monotonic()
        checkpoint.prune(tmp_path, keep=1)
        assert time.monotonic() - t0 < 1.0  # the trainer does not wait on the reader
        assert [p.name for p in checkpoint.complete(tmp_path)] == [first.name, newest.name]
    checkpoint.prune(tmp_path, keep=1)  # the next save's prune takes it
    assert checkpoint.complete(tmp_path) == [newest]
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_checkpoint_pruned_before_its_pin_gives_way_to_the_newest(tmp_path):
    _fake_checkpoint(tmp_path, 1)
    _fake_checkpoint(tmp_path, 2)
    calls = []

    def find():  # the trainer prunes step 1 just after the reader found it
        found = checkpoint.find(tmp_path, None if calls else 1)
        if not calls:
            assert pins.remove_unless_read(found)
        calls.append(found.name)
        return found

    with pins.reading(find) as held:
        assert held.name == "step-00000002" and calls == ["step-00000001", "step-00000002"]


def test_a_checkpoint_of_an_older_tst_without_a_pin_file_is_pinned_all_the_same(tmp_path):
    old = _fake_checkpoint(tmp_path, 1)
    (old / pins.PIN).unlink()
    _fake_checkpoint(tmp_path, 2)
    with pins.reading(lambda: checkpoint.find(tmp_path, 1)):
        checkpoint.prune(tmp_path, keep=1)
        assert old.is_dir()


@pytest.mark.slow
def test_eval_sample_and_export_never_fail_against_a_run_that_prunes_every_step(small_data, tmp_path):
    """A run saving every step with checkpoint.keep = 1 (the worst case for a reader), and eval, sample and export
    looped against it while it trains: every one exits 0."""
    r = small_recipe(small_data, **{"train.steps": 100000, "checkpoint.every": 1, "checkpoint.keep": 1,
                                    "eval.every": 1000, "train.log_every": 100})
    recipe, run = write_recipe(tmp_path / "r.toml", r), tmp_path / "run"
    log = (tmp_path / "train.log").open("w")  # not a pipe: a full pipe would block the run
    trainer = subprocess.Popen([sys.executable, "-m", "tstcli", "train", str(recipe), "--run-dir", str(run)],
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.complete(run / "checkpoints"):
            assert trainer.poll() is None and time.monotonic() < deadline, "the run did not save a checkpoint"
            time.sleep(0.2)
        verbs = [("eval", run), ("sample", run, "--max-new-tokens", "4"),
                 ("export", run, "--out", tmp_path / "export", "--force")]
        for _ in range(2):  # two rounds of each verb while the run saves and prunes every step
            for args in verbs:
                res = run_cli(*args)
                assert res.returncode == 0, (args[0], res.stderr)
                assert trainer.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        step = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        assert step > 10  # it trained (and pruned) all along
    finally:
        trainer.kill()
        trainer.wait()
        log.close()
