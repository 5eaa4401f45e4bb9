"""Runs survive kills and refuse to continue on changed inputs (issue #6)."""
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli, small_recipe, wait_until, write_recipe
from test_cli_errors import assert_one_line_error
from test_resume import train_losses
from tstcli.errors import CheckpointError
from tstcli.run import checkpoint, integrity


@pytest.fixture(scope="module")
def finished(finished_run):
    """A finished SMALL run whose checkpoints (every 2 steps, all kept) later tests copy and tamper with."""
    return finished_run


def _copy_run(src, dst, keep_until):
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > keep_until:
            shutil.rmtree(ckpt)
    return dst


@pytest.mark.slow
def test_edited_recipe_is_refused_unless_the_change_is_neutral(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run", 6)
    text = (run / "recipe.toml").read_text()
    (run / "recipe.toml").write_text(text.replace("lr = 0.003", "lr = 0.001"))
    assert_one_line_error(run_cli("resume", run), 4, "train.lr", "0.003", "0.001", "step-00000006")
    # eval/checkpoint/logging cadence and how checkpoints are written may change: results stay the same
    text = re.sub(r"(\[eval\]\nevery = )\d+", r"\g<1>5", text).replace("async = true", "async = false")
    assert "async = false" in text
    (run / "recipe.toml").write_text(text)
    r = run_cli("resume", run)
    assert r.returncode == 0, r.stderr
    assert train_losses(run) == train_losses(finished)


@pytest.mark.slow
def test_changed_data_is_refused_unless_allowed(finished, small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    run = _copy_run(finished, tmp_path / "run", 6)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data_dir": str(data)}))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["sources"][0]["origin"] = "edited by hand"  # any change to the manifest changes its hash
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("resume", run), 3, "manifest.json", "changed", "--allow-changed-data")
    r = run_cli("resume", run, "--allow-changed-data")
    assert r.returncode == 0, r.stderr
    assert "continuing on changed data" in r.stderr
    assert json.loads((run / "run.json").read_text())["data_changes"] == 1


def test_changed_tokenizer_is_refused(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run", 6)
    (run / "tokenizer.json").write_text((run / "tokenizer.json").read_text().replace('"<|endoftext|>"', '"<|eot|>"'))
    assert_one_line_error(run_cli("resume", run), 3, "tokenizer differs")


@pytest.mark.slow
def test_pickled_checkpoint_is_refused(finished, tmp_path):
    """Nothing is unpickled: a checkpoint file holding a pickle (code execution on load) is rejected."""
    run = _copy_run(finished, tmp_path / "run", 6)
    target = run / "checkpoints" / "step-00000006" / "shard-00001-model-00001-of-00001.safetensors"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    torch.save({"weights": Evil()}, target)  # a pickle, not safetensors
    assert_one_line_error(run_cli("resume", run), 4, target.name, "sha256")  # the checksum catches it first
    state_path = target.parent / "state.json"  # an attacker may rewrite state.json too: still nothing is unpickled
    state = json.loads(state_path.read_text())
    state = {**state, "sha256": integrity.checksums(target.parent, state["files"])}
    state_path.write_text(json.dumps({**state, "state_sha256": checkpoint._state_sha(state)}))
    assert_one_line_error(run_cli("resume", run), 4, "step-00000006", "cannot load checkpoint")
    assert not (tmp_path / "pwned").exists()
    shutil.copy(finished / "checkpoints" / "step-00000006" / target.name, target)
    shutil.copy(finished / "checkpoints" / "step-00000006" / "state.json", state_path)
    (target.parent / "shard-00002-model-00001-of-00001.safetensors").write_bytes(pickle.dumps({"state": Evil()}))
    assert_one_line_error(run_cli("resume", run), 4, "step-00000006", "cannot load checkpoint")
    assert not (tmp_path / "pwned").exists()


def test_short_disk_refuses_to_save_and_leaves_no_partial_checkpoint(small_data, tmp_path, monkeypatch):
    from tstcli.train.session import local_trainer
    t = local_trainer(small_recipe(small_data), tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 1000))
    with pytest.raises(CheckpointError, match="MiB free"):
        t.run()
    assert checkpoint.complete(tmp_path / "checkpoints") == []
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_k_never_deletes_the_only_complete_checkpoint(finished, tmp_path):
    root = _copy_run(finished, tmp_path / "run", 12) / "checkpoints"
    for name in ("step-00000014", "step-00000016"):  # newer but incomplete (no state.json)
        (root / name).mkdir()
        (root / name / "shard-00001-model-00001-of-00001.safetensors").write_bytes(b"partial")
    checkpoint.prune(root, keep=1)
    assert [p.name for p in checkpoint.complete(root)] == ["step-00000012"]
    assert checkpoint.latest(root).name == "step-00000012"


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(small_data, tmp_path):
    """10 seeded trials: SIGKILL at a random moment or right when a checkpoint save is in progress; every resume
    succeeds and the final per-step losses equal an uninterrupted run's, bitwise."""
    r = small_recipe(small_data, **{"train.steps": 200, "tst.ratio": 0.4, "checkpoint.every": 1,
                                    "checkpoint.keep": 2, "eval.every": 10})
    recipe = write_recipe(tmp_path / "r.toml", r)
    ref = run_cli("train", recipe, "--run-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    rng = random.Random(1234)
    during_save = 0
    for trial in range(10):
        args = ["train", str(recipe), "--run-dir", str(run)] if trial == 0 else ["resume", str(run)]
        err = tmp_path / f"stderr-{trial}.txt"  # read only if the process did not die by the kill
        with open(err, "w") as errf:
            p = subprocess.Popen([sys.executable, "-m", "tstcli", *args], stdout=subprocess.DEVNULL,
                                 stderr=errf, stdin=subprocess.DEVNULL)
        ckpts = run / "checkpoints"
        hit = False
        if trial % 2:  # kill in the middle of a save: as soon as a temporary checkpoint directory appears
            deadline = time.time() + 60
            while time.time() < deadline and p.poll() is None:
                try:
                    hit = any(n.startswith(".tmp-") for n in os.listdir(ckpts))
                except FileNotFoundError:
                    pass
                if hit:
                    break
        else:  # at a random moment after start-up
            if trial == 0:  # not before the run has a checkpoint, which `tst resume` needs (on a loaded machine
                # start-up alone can take seconds)
                wait_until(lambda: checkpoint.latest(ckpts) is not None, "the run's first checkpoint", p)
            time.sleep(2.0 + rng.random() * 1.5)
        p.send_signal(signal.SIGKILL)
        p.wait()
        during_save += hit and p.returncode == -signal.SIGKILL
        assert p.returncode in (-signal.SIGKILL, 0), (trial, err.read_text()[-3000:])
        if checkpoint.latest(ckpts) is not None:  # the latest complete checkpoint always loads
            json.loads((checkpoint.latest(ckpts) / "state.json").read_text())
    assert during_save >= 1, "no kill landed during a checkpoint save"
    final = run_cli("resume", run)
    assert final.returncode == 0, final.stderr
    assert train_losses(run) == train_losses(tmp_path / "ref")


def _start_and_wait(recipe, run, rows):
    p = subprocess.Popen([sys.executable, "-m", "tstcli", "train", str(recipe), "--run-dir", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.exists() and m.read_text().count('"train"') >= rows and checkpoint.latest(run / "checkpoints"):
            break
        time.sleep(0.01)
    return p


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130_and_a_second_ctrl_c_stops_at_once(small_data, tmp_path):
    r = small_recipe(small_data, **{"train.steps": 400, "checkpoint.every": 50, "eval.every": 100})
    recipe = write_recipe(tmp_path / "r.toml", r)
    ref = run_cli("train", recipe, "--run-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    # one Ctrl-C: finish the step, save, exit 130
    p = _start_and_wait(recipe, tmp_path / "one", 60)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    step = int(re.search(r"stopped by signal 2 at step (\d+)", err).group(1))
    assert checkpoint.latest(tmp_path / "one" / "checkpoints").name == f"step-{step:08d}"
    assert run_cli("resume", tmp_path / "one").returncode == 0
    assert train_losses(tmp_path / "one") == train_losses(tmp_path / "ref")
    # two Ctrl-Cs in a row: out at once (no new checkpoint required), the previous checkpoint intact
    p = _start_and_wait(recipe, tmp_path / "two", 60)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode in (130, -signal.SIGINT)
    latest = checkpoint.latest(tmp_path / "two" / "checkpoints")
    assert latest is not None and (latest / "state.json").is_file()
    assert run_cli("resume", tmp_path / "two").returncode == 0
    assert train_losses(tmp_path / "two") == train_losses(tmp_path / "ref")
