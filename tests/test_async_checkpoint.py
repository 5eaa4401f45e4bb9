"""Checkpoints written in the background (checkpoint.async): training goes on during the write, a kill during it
leaves the previous checkpoint as the latest and resumes bitwise, SIGTERM waits for it, and every save is a
`checkpoint` row with how long training stood still."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, small_recipe, wait_until, write_recipe
from test_resume import SHARD, assert_same_tensors, train_losses
from tstcli.run.metrics import read_rows
from tstcli.train.hooks import Hook

# The real CLI, with the background write of checkpoint SLOW_STEP held up for SLOW_S seconds (a slow file system).
SLOW_CLI = """
import sys, time
import tstcli.run.checkpoint as c
real = c.write
def slow(tmp, step, *args, **kw):
    if step == {step}:
        time.sleep({seconds})
    return real(tmp, step, *args, **kw)
c.write = slow
from tstcli.cli.app import main
sys.argv = ["tst", *sys.argv[1:]]
main()
"""


def _slow_cli(*args, step, seconds):
    code = SLOW_CLI.format(step=step, seconds=seconds)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trained_to(run, step):
    try:
        return any(r["step"] >= step for r in read_rows(run, "train"))
    except OSError:
        return False


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """An uninterrupted run, checkpoints every 3 steps, written in the background."""
    tmp = tmp_path_factory.mktemp("async")
    recipe = write_recipe(tmp / "r.toml", small_recipe(small_data, **{"checkpoint.every": 3,
                                                                      "checkpoint.async": True}))
    r = run_cli("train", recipe, "--run-dir", tmp / "a")
    assert r.returncode == 0, r.stderr
    return recipe, tmp / "a"


def test_every_save_is_a_checkpoint_row(reference):
    _, run = reference
    rows = read_rows(run, "checkpoint")
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    assert [r["async"] for r in rows] == [True, True, True, False]  # the run's last save is written before it ends
    assert all(0 <= r["blocking_s"] <= r["total_s"] for r in rows)


@pytest.mark.slow
def test_training_goes_on_during_a_write_and_kill_9_resumes_from_the_previous_checkpoint(reference, tmp_path):
    recipe, a = reference
    b = tmp_path / "b"
    p = _slow_cli("train", recipe, "--run-dir", b, step=6, seconds=120)
    try:
        ckpts = b / "checkpoints"
        # Step 8 trained while checkpoint 6 is still being written: the write did not stop training.
        wait_until(lambda: _trained_to(b, 8) and (ckpts / ".tmp-step-00000006").is_dir(), "step 8 during the write",
                   p)
        assert not (ckpts / "step-00000006").exists()
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        p.kill()
    assert sorted(x.name for x in ckpts.glob("step-*")) == ["step-00000003"]  # the previous one is the latest
    r = run_cli("resume", b)
    assert r.returncode == 0, r.stderr
    assert "from step-00000003" in r.stderr
    assert train_losses(b) == train_losses(a)
    final = "checkpoints/step-00000012/" + SHARD  # model and optimizer state
    assert_same_tensors(b / final, a / final)
    assert not list(ckpts.glob(".tmp-*"))


@pytest.mark.slow
def test_sigterm_during_a_write_exits_143_with_both_checkpoints_complete(reference, tmp_path):
    recipe, a = reference
    b = tmp_path / "b"
    p = _slow_cli("train", recipe, "--run-dir", b, step=6, seconds=4)
    try:
        wait_until(lambda: _trained_to(b, 7) and (b / "checkpoints" / ".tmp-step-00000006").is_dir(),
                  "a step during the write")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 143, err
    stopped = max(r["step"] for r in read_rows(b, "train"))
    done = sorted(int(x.name.split("-")[1]) for x in (b / "checkpoints").glob("step-*"))
    assert done[-2:] == [6, stopped] and stopped > 6
    for step in done:
        assert json.loads((b / "checkpoints" / f"step-{step:08d}" / "state.json").read_text())["step"] == step
    rows = {r["step"]: r for r in read_rows(b, "checkpoint")}
    assert rows[6]["async"] and rows[6]["total_s"] >= 4 > rows[6]["blocking_s"]
    assert not rows[stopped]["async"]  # the stop's own save is written before the process exits
    assert rows[stopped]["blocking_s"] >= 1.0  # training stood still while it waited for the rest of write 6
    r = run_cli("resume", b)
    assert r.returncode == 0, r.stderr
    assert train_losses(b) == train_losses(a)
    assert_same_tensors(b / "checkpoints/step-00000012" / SHARD, a / "checkpoints/step-00000012" / SHARD)


def test_a_failed_background_write_is_exit_4_naming_the_checkpoint(reference, tmp_path):
    """The disk fills while checkpoint 6 is written in the background: the next save reports it."""
    recipe, _ = reference
    b = tmp_path / "b"
    code = """
import errno, os, sys
import tstcli.run.checkpoint as c
real = c._finish
def full(tmp, *args):
    if tmp.name.endswith("00000006"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "state.json"))
    return real(tmp, *args)
c._finish = full
from tstcli.cli.app import main
sys.argv = ["tst", *sys.argv[1:]]
main()
"""
    p = subprocess.run([sys.executable, "-c", code, "train", str(recipe), "--run-dir", str(b)],
                       cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert p.returncode == 4, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ".tmp-step-00000006" in last and "Traceback" not in p.stderr, p.stderr
    assert sorted(x.name for x in (b / "checkpoints").glob("step-*")) == ["step-00000003"]
    assert not list((b / "checkpoints").glob(".tmp-*"))


def test_at_most_one_write_in_flight_a_save_waits_for_the_previous(monkeypatch, tmp_path):
    import torch

    from tstcli.parallel.world import World
    from tstcli.run import checkpoint
    from tstcli.run.saver import Saver

    real = checkpoint.write

    def slow_first(tmp, step, *args):
        time.sleep(1.0 if step == 1 else 0)
        return real(tmp, step, *args)
    monkeypatch.setattr(checkpoint, "write", slow_first)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    saver = Saver(tmp_path, World(), keep=0, background=True)
    t0 = time.perf_counter()
    assert saver.save(1, model, opt, {"step": 1}, "") == []  # returns at once: the write goes on
    assert time.perf_counter() - t0 < 0.5 and not (tmp_path / "step-00000001").exists()
    model.weight.data.add_(1.0)  # training goes on: the write in flight holds its own copy
    rows = saver.save(2, model, opt, {"step": 2}, "")  # waits for write 1 first
    assert [r["step"] for r in rows] == [1] and rows[0]["total_s"] >= 1.0 > rows[0]["blocking_s"]
    assert (tmp_path / "step-00000001" / "state.json").is_file()
    rows = saver.close()
    assert [r["step"] for r in rows] == [2] and rows[0]["async"]
    assert rows[0]["blocking_s"] >= 0.9  # save 2 stood still while write 1 finished
    one = torch.nn.Linear(4, 4)
    checkpoint.load_weights(tmp_path / "step-00000001", one)
    assert torch.equal(one.weight + 1.0, model.weight.detach())  # step 1's weights, not the ones after it


class Messages(Hook):
    """The lines a run says."""

    def __init__(self):
        self.lines = []

    def on_message(self, t, text):
        self.lines.append(text)


@pytest.mark.parametrize("write_fails", [False, True], ids=["write-completes", "write-fails"])
def test_an_error_during_a_background_write_keeps_its_checkpoint_and_row(small_data, tmp_path, monkeypatch,
                                                                         write_fails):
    """Training diverges at step 7 while checkpoint 6 is still being written: the write completes and its row is in
    metrics.jsonl (the writer closes before the metrics log), and the error stays the one reported; a write that
    fails instead costs one warning line, never the divergence's error."""
    from test_training import PoisonGradients, _trainer
    from tstcli.errors import DivergedError
    from tstcli.run import checkpoint

    real = checkpoint.write

    def slow(tmp, step, *args):
        if step == 6:
            time.sleep(1.5)
            if write_fails:
                raise checkpoint.CheckpointError(f"{tmp}: cannot write the checkpoint (a test)")
        return real(tmp, step, *args)
    monkeypatch.setattr(checkpoint, "write", slow)
    said = Messages()
    t = _trainer(small_data, tmp_path, extra_hooks=[PoisonGradients({7}), said], **{
        "checkpoint.every": 3, "checkpoint.async": True, "train.skip_nonfinite_steps": 0})
    with pytest.raises(DivergedError, match="step 7"):
        t.run()
    saved = sorted(x.name for x in (tmp_path / "checkpoints").glob("step-*"))
    rows = [r["step"] for r in read_rows(tmp_path, "checkpoint")]
    lost = [line for line in said.lines if "lost" in line]
    if write_fails:
        assert saved == ["step-00000003"] and rows == [3] and len(lost) == 1 and "a test" in lost[0]
    else:
        assert saved == ["step-00000003", "step-00000006"] and rows == [3, 6] and not lost
