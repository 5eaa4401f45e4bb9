"""Reliability round three (issue 29), tried through the real CLI: damaged run files are refused with one line and
the documented exit code, never trained over."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from test_exit_codes import _signal_when


def _drop_rows(run, steps):
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step") not in steps or r["kind"] != "train"))


def test_resume_refuses_a_log_that_lost_rows_or_the_run_tokenizer(finished_run_copy):
    run = finished_run_copy  # 12 steps, a checkpoint every 2
    before = (run / "metrics.jsonl").read_text()
    _drop_rows(run, {3, 4, 5})
    assert_one_line_error(run_cli("resume", run), 4, "metrics.jsonl", "no rows for steps 3-5", "step 12")
    (run / "metrics.jsonl").unlink()
    assert_one_line_error(run_cli("resume", run), 4, "metrics.jsonl", "missing")
    assert not (run / "metrics.jsonl").exists()  # refused before anything was written
    (run / "metrics.jsonl").write_text(before)
    (run / "tokenizer.json").unlink()
    assert_one_line_error(run_cli("resume", run), 4, "tokenizer.json", "missing")


def test_eval_refuses_nothing_to_evaluate_and_more_shots_than_the_pool(finished_export):
    assert_one_line_error(run_cli("eval", finished_export), 2, "nothing to evaluate", "--bench")
    r = run_cli("eval", finished_export, "--bench", "mmlu:anatomy", "--num-fewshot", 6, "--limit", 1,
                "--data-dir", SHARED)
    assert_one_line_error(r, 2, "--num-fewshot 6", "holds 5")


def test_sample_options_that_cannot_work_are_one_line(finished_export, tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"Call me \xff\xfe Ishmael")
    assert_one_line_error(run_cli("sample", finished_export, "--prompt-file", bad), 3, "prompt.txt", "not UTF-8",
                          "0xff")
    for t in ("nan", "inf", "-1"):
        assert_one_line_error(run_cli("sample", finished_export, "--temperature", t), 2, "--temperature")
    assert_one_line_error(run_cli("sample", finished_export, "--seed", 2**70), 2, "--seed")
    # a temperature so small that logits / T overflow: the greedy continuation, not a crash
    args = ("sample", finished_export, "--prompt", "Call me", "--max-new-tokens", 8, "--json")
    greedy, tiny = run_cli(*args, "--temperature", 0), run_cli(*args, "--temperature", "1e-45")
    assert tiny.returncode == 0, tiny.stderr
    assert json.loads(tiny.stdout)["samples"][0]["token_ids"] == json.loads(greedy.stdout)["samples"][0]["token_ids"]


def test_sample_says_when_it_stopped_at_the_context(finished_export):
    from tokenizers import Tokenizer

    limit = json.loads((finished_export / "config.json").read_text())["max_position_embeddings"]
    tok = Tokenizer.from_file(str(finished_export / "tokenizer.json"))
    prompt = "the whale"
    while len(tok.encode(prompt + " and the whale", add_special_tokens=False).ids) < limit - 2:
        prompt += " and the whale"
    r = run_cli("sample", finished_export, "--prompt", prompt, "--max-new-tokens", 50, "--temperature", 0)
    assert r.returncode == 0, r.stderr
    assert f"stopped at the model's context ({limit} tokens" in r.stderr
    r = run_cli("sample", finished_export, "--prompt", "the whale", "--max-new-tokens", 3)
    assert r.returncode == 0 and "stopped at" not in r.stderr, r.stderr


def _long_recipe(small_data, tmp_path):
    return write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{
        "train.steps": 400, "checkpoint.every": 1000, "eval.every": 1000}))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1], ids=["SIGHUP", "SIGUSR1"])
def test_sighup_and_sigusr1_stop_training_with_a_save(small_data, tmp_path, signum):
    """A closed SSH session (SIGHUP) and SLURM's pre-emption warning (SIGUSR1) stop as SIGTERM does."""
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"
    rc, err = _signal_when(["train", _long_recipe(small_data, tmp_path), "--run-dir", run],
                           lambda _: metrics.exists() and '"step": 3,' in metrics.read_text(), signum, settle=0)
    assert rc == 128 + signum, err
    assert f"stopped by signal {int(signum)}" in err and "Traceback" not in err
    last = max(json.loads(line)["step"] for line in metrics.read_text().splitlines()
               if json.loads(line)["kind"] == "train")
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{last:08d}"]


def test_a_signal_during_a_save_stops_at_the_saved_step(small_data, tmp_path, monkeypatch):
    """SIGTERM while a checkpoint is being written: that checkpoint is the last, no further step is trained."""
    from tstcli.errors import Stopped
    from tstcli.run.saver import Saver
    from tstcli.train.session import local_trainer

    r = small_recipe(small_data, **{"train.steps": 12, "checkpoint.every": 4, "checkpoint.async": False})
    save = Saver.save

    def signalled_save(self, step, *args, **kwargs):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the save of step 4 runs
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(Saver, "save", signalled_save)
    t = local_trainer(r, tmp_path / "run")
    with pytest.raises(Stopped) as stopped:
        t.run()
    assert stopped.value.step == 4 and t.state.step == 4
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000004"]


@pytest.mark.slow
def test_a_signal_after_the_summary_keeps_exit_0(small_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 3}))
    p = subprocess.Popen([sys.executable, "-m", "tstcli", "train", str(recipe), "--run-dir", str(tmp_path / "run")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    first = p.stdout.readline()
    assert first.startswith("run: "), first
    p.send_signal(signal.SIGTERM)  # a scheduler's late SIGTERM, the moment the summary appears
    p.stdout.read()
    assert p.wait(timeout=120) == 0


def test_state_json_is_covered_by_its_own_checksum(finished_run_copy):
    state_path = finished_run_copy / "checkpoints" / "step-00000012" / "state.json"
    state = json.loads(state_path.read_text())
    assert len(state["state_sha256"]) == 64
    state["tokens"] += 1  # still valid JSON, still plausible: only the checksum can tell
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    for args in (("resume", finished_run_copy), ("eval", finished_run_copy)):
        assert_one_line_error(run_cli(*args), 4, "step-00000012/state.json", "damaged")


def test_a_data_dir_tst_did_not_make_is_refused_untouched(small_data, tmp_path):
    """Issue 29 (3): a project folder, a file, /dev/null or /proc/self as data.dir: exit 3 naming it, nothing
    written there."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tokenizer.json").write_text("my own")
    (project / "notes.txt").write_text("mine")
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(tmp_path / "unused"))
    for where in (project, "/dev/null", "/proc/self", tmp_path / "r.toml"):
        for verb in (("prepare", recipe), ("train", recipe, "--run-dir", tmp_path / f"run-{len(str(where))}")):
            r = run_cli(*verb, "--set", f'data.dir="{where}"')
            assert_one_line_error(r, 3, str(where), "data.dir")
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "tokenizer.json"]
    assert (project / "tokenizer.json").read_text() == "my own"
    # a tst data directory (the shared one) and a new folder are fine
    assert run_cli("prepare", recipe, "--set", f'data.dir="{small_data}"').returncode == 0


def test_export_prints_only_its_own_lines(finished_run, tmp_path):
    """Issue 29 (12): the self-test imports transformers (and with it torchao): no torchao or torch pytree
    warnings reach the user."""
    import re

    r = run_cli("export", finished_run, "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    foreign = [line for line in r.stderr.splitlines() if line.strip() and not re.match(r"^[a-z-]+: ", line)]
    assert not foreign, r.stderr


def test_bundled_recipes_train_every_position_their_model_declares():
    """Issue 29 (11): `model.max_seq_len` is what an export advertises and what `sample`/`eval --corpus` use;
    a bundled recipe trains exactly those positions."""
    from conftest import ROOT
    from tstcli import recipe as recipes

    paths = sorted((ROOT / "recipes").rglob("*.toml"))
    assert len(paths) > 10
    for path in paths:
        r = recipes.load(path)
        assert r.model.max_seq_len == r.train.seq_len, path


class _Split:
    """A validation split of shards of the given lengths (tokens): what `val_rows` reads of a TokenStore."""

    def __init__(self, lengths):
        import numpy as np

        self.lengths = np.array(lengths)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def rows(self, offsets, width):
        return offsets


def test_heldout_rows_are_drawn_evenly_across_the_split():
    """Issue 29 (9): not the split's first rows (on the default corpus, one book), every stretch in proportion."""
    from tstcli.data.loader import heldout_share, spread, val_rows

    split = _Split([10_000, 10_000, 30_000, 50_000])  # four sources, 1:1:3:5; rows of 100 tokens
    rows = val_rows(split, 100, 100)
    shard = [int((split.starts <= r).sum()) - 1 for r in rows]
    assert [shard.count(k) for k in range(4)] == [10, 10, 30, 50]
    assert len(set(rows.tolist())) == 100 and rows[0] == 0
    assert heldout_share(split, 100, 100) == 0.1 and heldout_share(split, 100, 5000) == 1.0
    assert spread(rows, 1000).tolist() == rows.tolist()  # fewer rows than asked: all of them


def test_val_rows_say_which_share_of_the_split_they_are(finished_run):
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    shares = {row["val_share"] for row in rows if row["kind"] == "val"}
    assert len(shares) == 1 and 0 < shares.pop() <= 1
    r = run_cli("eval", finished_run, "--json")
    assert r.returncode == 0, r.stderr
    held = json.loads(r.stdout)["heldout"]
    assert held["share"] == [row["val_share"] for row in rows if row["kind"] == "val"][-1]
    assert f"{held['share']:.1%} of its validation split" in run_cli("eval", finished_run).stdout


def test_cpu_bf16_units_are_read_from_the_cpu_flags():
    from tstcli.train.hardware import cpu_has_bf16

    base = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f"
    assert not cpu_has_bf16(base) and not cpu_has_bf16("")
    assert cpu_has_bf16(base + " avx512_bf16") and cpu_has_bf16(base + " amx_tile amx_bf16")


def test_dtype_auto_is_resolved_once_and_explicit_emulated_bf16_warns(small_data, tmp_path, monkeypatch):
    """Issue 29 (10): `auto` (the default) becomes bf16 or fp32 for this device, written into the run's recipe."""
    import torch

    from tstcli import recipe as recipes
    from tstcli.train import hardware

    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 2}))
    r = run_cli("train", recipe, "--run-dir", tmp_path / "run", "--set", 'train.dtype="auto"')
    assert r.returncode == 0, r.stderr
    expected = "bf16" if hardware.cpu_has_bf16() else "fp32"
    assert recipes.load(tmp_path / "run" / "recipe.toml").train.dtype == expected
    assert recipes.load(ROOT / "recipes" / "3b.toml").train.dtype in ("auto", "bf16")
    # an explicit bf16 where the CPU emulates it: one warning; where it has the units, none
    said = []
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda cpuinfo=None: False)
    base = small_recipe(small_data, **{"train.dtype": "bf16"})
    assert hardware.resolve_dtype(base, torch.device("cpu"), said.append) is base
    assert len(said) == 1 and "without bf16 units" in said[0]
    auto = small_recipe(small_data, **{"train.dtype": "auto"})
    assert hardware.resolve_dtype(auto, torch.device("cpu"), said.append).train.dtype == "fp32" and len(said) == 1
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert hardware.resolve_dtype(auto, torch.device("cpu")).train.dtype == "bf16"
    assert hardware.resolve_dtype(base, torch.device("cpu"), said.append) is base and len(said) == 1


def test_a_read_only_data_dir_that_needs_a_new_pack_exits_3(small_data, tmp_path):
    """Issue 29 (7): exit 3 naming the data directory, as the README says, not a checkpoint-class failure."""
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    if os.geteuid() != 0:  # read-only for a normal user
        for p in [data, *data.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
    else:  # root writes through permission bits: the packs folder is a file, so nothing can be written under it
        shutil.rmtree(data / "packs", ignore_errors=True)
        (data / "packs").write_text("")
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data, **{"run.seed": 12345}))  # a pack not made yet
    r = run_cli("train", recipe, "--run-dir", tmp_path / "run")
    assert_one_line_error(r, 3, str(data), "new pack", "data.dir")


@pytest.mark.slow
def test_prepare_force_repairs_a_shard_under_a_run_and_the_run_reads_the_same_tokens(tmp_path):
    """Issue 29 (4): `tst prepare --force`, the documented repair, rebuilds the same inputs under a run that uses
    them (it was refused: a dead end); the run then continues on exactly the tokens it trained on."""
    import shutil

    data = tmp_path / "data"
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data, **{"train.steps": 6}))
    run = tmp_path / "run"
    assert run_cli("train", recipe, "--run-dir", run).returncode == 0
    losses = {row["step"]: row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if row["kind"] == "train"}
    shard = data / json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # past the quick check's first and last 64 KiB
    shard.write_bytes(bytes(raw))
    assert_one_line_error(run_cli("prepare", recipe, "--verify"), 3, shard.name, "sha256")
    r = run_cli("prepare", recipe, "--force")
    assert r.returncode == 0, r.stderr
    assert run_cli("prepare", recipe, "--verify").returncode == 0
    for step in (4, 6):  # resume from step 2: steps 3-6 read the repaired shards again
        shutil.rmtree(run / "checkpoints" / f"step-{step:08d}")
    r = run_cli("resume", run)
    assert r.returncode == 0, r.stderr
    again = {row["step"]: row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if row["kind"] == "train"}
    assert again == losses


@pytest.mark.slow
def test_under_torchrun_a_refused_resume_is_one_line_from_every_rank(finished_run_copy):
    """Issue 29 (7): rank 0 is refused the run's lock; rank 1 said "a bug in tst" when its barrier broke."""
    from test_distributed import torchrun
    from tstcli import locks

    held = locks.DirLock(finished_run_copy).acquire(wait=False)  # another process trains this run
    try:
        r = torchrun(2, "resume", finished_run_copy)
    finally:
        held.release()
    assert r.returncode != 0
    assert r.stderr.count("error: run directory") == 2 and r.stderr.count("is in use by") == 2, r.stderr[-3000:]
    assert "bug in tst" not in r.stderr and "exitcode: 1" not in r.stderr, r.stderr[-3000:]


def test_mfu_in_bf16_on_a_cpu_never_passes_100_percent(small_data, tmp_path):
    """Issue 29 (10): the CPU's peak is measured on the ops the model runs (a CPU without bf16 units ran `linear`
    ~2x faster than the `mm` the peak was taken from: MFU 194-208%)."""
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{
        "train.steps": 3, "train.dtype": "bf16", "model.dim": 256, "model.n_heads": 4, "train.batch_size": 8}))
    r = run_cli("train", recipe, "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    mfu = [row["mfu"] for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if row["kind"] == "train"]
    assert mfu and all(0 < m < 1 for m in mfu), mfu


@pytest.mark.slow
def test_a_renamed_run_keeps_its_data_protected_and_a_deleted_one_frees_it(tmp_path):
    """Issue 29 (4): the data registry names runs by path; a renamed run is found by its hard-linked claim."""
    import shutil

    data = tmp_path / "data"
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data, **{"train.steps": 2}))
    assert run_cli("train", recipe, "--run-dir", tmp_path / "run").returncode == 0
    (tmp_path / "run").rename(tmp_path / "renamed")
    other = write_recipe(tmp_path / "o.toml", small_recipe(data, **{"data.val_fraction": 0.1}))
    assert_one_line_error(run_cli("prepare", other), 3, str(tmp_path / "run"), "renamed or moved")
    assert run_cli("resume", tmp_path / "renamed").returncode == 0  # the renamed run still reads its data
    shutil.rmtree(tmp_path / "renamed")
    r = run_cli("prepare", other)  # deleted: the data is free
    assert r.returncode == 0, r.stderr


def test_touching_an_unchanged_source_is_not_other_inputs(small_data, tmp_path):
    """Issue 29 (4): size and mtime say a file may have changed; its recorded content hash decides."""
    import os
    import shutil

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Call me Ishmael, chapter {i}. Some years ago, never mind how long.\n\n"
                              for i in range(400)))
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(tmp_path / "data", **{
        "data.sources": [str(corpus)], "data.tokenizer": str(small_data / "tokenizer.json")}))
    assert run_cli("prepare", recipe).returncode == 0
    manifest = (tmp_path / "data" / "manifest.json").read_bytes()
    os.utime(corpus, ns=(10**18, 10**18))  # touched: same bytes, another mtime
    r = run_cli("prepare", recipe)
    assert r.returncode == 0 and "up to date" in r.stderr + r.stdout, r.stderr
    assert (tmp_path / "data" / "manifest.json").read_bytes() == manifest
    shutil.copyfile(corpus, tmp_path / "copy.txt")
    corpus.write_text(corpus.read_text().replace("Call", "Tell"))  # same size, other bytes: other inputs
    r = run_cli("prepare", recipe)
    assert r.returncode == 0 and "missing or stale" in r.stderr, r.stderr
    assert (tmp_path / "data" / "manifest.json").read_bytes() != manifest
