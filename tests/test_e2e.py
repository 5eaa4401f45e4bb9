"""End to end through the real CLI: the README's main command works in a fresh copy of the repository and its tiny
recipe learns in both phases; compiled bf16 resume is exact; SIGTERM saves and exits 143."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, small_recipe, write_recipe
from test_resume import train_losses

TINY = ROOT / "recipes" / "tiny.toml"


def val_losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if r["kind"] == "val"}


@pytest.mark.slow
def test_compiled_bf16_resume_is_bitwise(tmp_path):
    """torch.compile + bf16 autocast (the GPU recipes' settings) resume exactly too. Without deterministic
    algorithms, Inductor's atomic scatter-add in the embedding backward made even two uninterrupted runs differ by
    step 6."""
    sets = ["--set", "train.steps=12", "--set", "tst.ratio=0.5", "--set", "checkpoint.every=3", "--set",
            'train.dtype="bf16"', "--set", "model.n_layers=2",  # two blocks: half the graph to compile
            "--set", "train.batch_size=4", "--set", "train.seq_len=64",
            "--set", "checkpoint.keep=0", "--set", "eval.every=1000", "--set", f'data.dir="{tmp_path}/data"']
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_cli("train", TINY, "--run-dir", a, *sets, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shutil.copytree(a, b)
    for ckpt in (b / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > 6:
            shutil.rmtree(ckpt)
    r = run_cli("resume", b, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert train_losses(a) == train_losses(b)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_resume_is_exact(small_data, tmp_path):
    r = small_recipe(small_data, **{"train.steps": 400, "checkpoint.every": 100, "eval.every": 100})
    recipe = write_recipe(tmp_path / "r.toml", r)
    ref = run_cli("train", recipe, "--run-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "tstcli", "train", str(recipe), "--run-dir", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.exists() and m.read_text().count('"train"') >= 30:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    stopped = int(re.search(r"stopped by signal 15 at step (\d+)", err).group(1))
    assert stopped < 400
    assert (run / "checkpoints" / f"step-{stopped:08d}" / "state.json").is_file()
    res = run_cli("resume", run)
    assert res.returncode == 0, res.stderr
    assert train_losses(run) == train_losses(tmp_path / "ref")


def _readme_block(name):
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {name} -->\n```\n(.*?)\n```\n<!-- /{name} -->", text, re.S)
    assert block, f"README.md has no {name} block"
    return block.group(1).strip()


@pytest.mark.slow
def test_readme_main_command_in_a_fresh_copy(tmp_path):
    """README command 1, verbatim, in a copy of the repository's files (fresh venv, no network, no ../shared)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    repo = tmp_path / "repo"
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    cmd = _readme_block("main-command")
    assert "tst train recipes/tiny.toml" in cmd
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    t0 = time.time()
    r = subprocess.run(["bash", "-c", cmd], cwd=repo, capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final held-out loss" in r.stdout and "tokens read: phase 1" in r.stdout and "wall time" in r.stdout
    assert "prepare: data in" in r.stderr  # prepared on demand, and said so
    final = float(re.search(r"final held-out loss: ([\d.]+)", r.stdout).group(1))
    assert final < 5.5, r.stdout
    run = repo / "runs" / "tiny"
    assert (run / "checkpoints" / "step-00000300" / "state.json").is_file()
    assert "compiling the phase-1 step" in r.stderr and "compiling the phase-2 step" in r.stderr
    assert re.search(r"^step 300/300 .* eta 0s$", r.stderr, re.M)
    # The tiny recipe learns in both phases: superposition (steps 1-90, s = 4) then next-token prediction.
    val = val_losses(run)
    assert val[50] < val[0] - 1.0, f"phase 1 did not lower held-out loss: {val}"
    assert val[300] < val[100] - 0.3, f"phase 2 did not lower held-out loss: {val}"
    assert final == pytest.approx(val[300], abs=1e-4)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    p1 = [x for x in rows if x["kind"] == "train" and x["phase"] == 1]
    assert len(p1) == 90 and all(x["mce_loss"] == x["loss"] for x in p1)
    assert {x["step"] for x in rows if x["kind"] == "train" and x["phase"] == 2} == set(range(91, 301))
    print(f"README main command: {time.time() - t0:.0f} s\n{r.stdout}")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and _readme_block("test-command").endswith("python -m pytest -q")


@pytest.mark.slow
def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(small_data, tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120x40 terminal
    p = subprocess.Popen([sys.executable, "-m", "tstcli", "train", str(recipe), "--run-dir", str(tmp_path / "tty")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=120)
    os.close(master)
    text = out.decode(errors="replace")
    assert p.returncode == 0, text
    assert "train: 100%" in text and "phase=2" in text and "loss=" in text and "val=" in text and "tok/s=" in text
    assert "eta=" in text
    plain = run_cli("train", recipe, "--run-dir", tmp_path / "plain")  # stderr is a pipe: plain lines, no bar
    assert "%|" not in plain.stderr and "\r" not in plain.stderr
    assert re.search(r"^step 12/12 phase 2 loss [\d.]+ lr .* tok/s \d+ pos/s \d+ mfu [\d.]+% data [\d.]+% "
                     r"elapsed (\d+[hms])+ eta 0s$", plain.stderr, re.M)
    assert re.search(r"^step 12 val_loss [\d.]+ \(256 held-out tokens, [\d.]+% of the validation split\)$",
                     plain.stderr, re.M)
