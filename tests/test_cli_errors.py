"""Bad input through the real CLI: one line on stderr naming the file/key, the documented exit code, no traceback."""
import json
import shutil

import pytest

from conftest import ROOT, run_cli, small_recipe, write_recipe

TINY = ROOT / "recipes" / "tiny.toml"


def assert_one_line_error(r, code, *needles):
    """Exit `code`; stderr ends with exactly one `error:` line holding every needle (progress lines may precede)."""
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])


@pytest.mark.parametrize("sets,needles", [
    (["train.nosuchkey=1"], ["train.nosuchkey", "tiny.toml"]),
    (['train.steps="ten"'], ["train.steps", "integer"]),
    (["tst.ratio=1.0"], ["tst.ratio", "[0, 1)"]),
    (["tst.ratio=-0.1"], ["tst.ratio"]),
    (["tst.bag_size=0"], ["tst.bag_size", "[1, "]),
    (["tst.mode=sideways"], ["tst.mode", "full, input, output"]),
    (["train.seq_len=1024"], ["train.seq_len", "model.max_seq_len"]),  # context does not fit the model
    (["model.n_heads=3"], ["model.n_heads"]),
    (["nosection.x=1"], ["nosection"]),
    (["train.loss_chunk_size=-8"], ["train.loss_chunk_size", "[0, 1048576]"]),
    (['tst.loss="bce"', 'tst.weighting="power"'], ["tst.weighting", "uniform", "'bce'"]),
])
def test_bad_recipe_values_exit_2(sets, needles, tmp_path):
    args = ["train", TINY, "--run-dir", tmp_path / "run"]
    for s in sets:
        args += ["--set", s]
    assert_one_line_error(run_cli(*args), 2, *needles)
    assert not (tmp_path / "run").exists()


def test_missing_recipe_and_bad_toml_exit_2(tmp_path):
    assert_one_line_error(run_cli("train", tmp_path / "nope.toml"), 2, "nope.toml", "no such file")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = \n")
    assert_one_line_error(run_cli("train", bad), 2, "bad.toml", "invalid TOML")
    assert_one_line_error(run_cli("train", TINY, "--bogus"), 2, "--bogus")


def test_missing_corpus_path_exits_3(tmp_path):
    r = run_cli("prepare", TINY, "--set", f'data.sources=["{tmp_path}/missing.jsonl"]',
                "--set", f'data.dir="{tmp_path}/d"')
    assert_one_line_error(r, 3, "missing.jsonl", "no such file")


def test_bad_jsonl_line_exits_3(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    r = run_cli("prepare", TINY, "--set", f'data.sources=["{src}"]', "--set", f'data.dir="{tmp_path}/d"')
    assert_one_line_error(r, 3, "c.jsonl:2", "'text'")


@pytest.mark.parametrize("path", ["train.jsonl", "en/c4-train.0000[0-3]-of-01024.json.gz"])
def test_hub_source_offline_exits_3(tmp_path, path):
    r = run_cli("prepare", TINY, "--set", f'data.sources=["hf://datasets/nobody/nothing/{path}"]',
                "--set", f'data.dir="{tmp_path}/d"', env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(r, 3, f"hf://datasets/nobody/nothing/{path}", "offline")


@pytest.mark.slow
def test_corrupt_shard_exits_3(small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    shard = next(data.glob("train-*.bin"))
    with open(shard, "ab") as fh:
        fh.write(b"\0\0")  # a size mismatch: caught on every start
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data))
    assert_one_line_error(run_cli("train", recipe, "--run-dir", tmp_path / "run"), 3, shard.name, "corrupt")
    # truncated: caught on every start
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 4)
    assert_one_line_error(run_cli("train", recipe, "--run-dir", tmp_path / "run"), 3, shard.name, "corrupt")
    # same size, bytes flipped near the start: caught by the cheap edge check on every start
    original = (small_data / shard.name).read_bytes()
    flipped = bytearray(original)
    flipped[10:12] = b"\xff\xff"
    shard.write_bytes(bytes(flipped))
    assert_one_line_error(run_cli("train", recipe, "--run-dir", tmp_path / "run"), 3, shard.name, "corrupt")
    # same size, bytes flipped in the middle: only the full sha256 check (prepare --verify) sees it
    flipped = bytearray(original)
    mid = len(flipped) // 2
    flipped[mid:mid + 2] = bytes(255 - b for b in flipped[mid:mid + 2])
    shard.write_bytes(bytes(flipped))
    assert_one_line_error(run_cli("prepare", recipe, "--verify"), 3, shard.name, "sha256")


@pytest.mark.slow
def test_missing_manifest_on_resume_exits_3(small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(data, **{"train.steps": 2}))
    assert run_cli("train", recipe, "--run-dir", tmp_path / "run").returncode == 0
    (data / "manifest.json").unlink()
    assert_one_line_error(run_cli("resume", tmp_path / "run"), 3, "manifest.json", "gone")


@pytest.mark.slow
def test_resume_errors_exit_4(tmp_path):
    assert_one_line_error(run_cli("resume", tmp_path / "no-run"), 4, "no-run")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("resume", tmp_path / "empty"), 4, "not a tst run directory")


def test_train_refuses_an_existing_run_dir(small_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data))
    assert_one_line_error(run_cli("train", recipe, "--run-dir", run), 2, "tst resume")
    assert (run / "metrics.jsonl").read_text() == "{}\n"  # nothing lost


def test_hub_tokenizer_offline_exits_3(tmp_path):
    r = run_cli("prepare", TINY, "--set", 'data.tokenizer="nobody/nothing"', "--set", f'data.dir="{tmp_path}/d"',
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(r, 3, "data.tokenizer", "nobody/nothing")


@pytest.mark.parametrize("name", ["..", ".", "a\\\\b"])
def test_run_name_is_one_plain_path_component(name, tmp_path):
    """run.name = ".." made runs/.. the current directory: the run was written over the user's own files there."""
    mine = {"recipe.toml": "# my recipe, with comments\n" + TINY.read_text(), "tokenizer.json": '{"mine": true}'}
    for f, text in mine.items():
        (tmp_path / f).write_text(text)
    r = run_cli("train", tmp_path / "recipe.toml", "--set", f'run.name="{name}"', cwd=tmp_path)
    assert_one_line_error(r, 2, "run.name", "one plain path component")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == mine  # nothing written, nothing replaced


def test_train_never_writes_into_a_folder_of_other_files(small_data, tmp_path):
    user = tmp_path / "project"
    user.mkdir()
    recipe = write_recipe(user / "recipe.toml", small_recipe(small_data))
    mine = {"recipe.toml": "# my recipe, with comments\n" + recipe.read_text(), "tokenizer.json": '{"mine": true}'}
    for f, text in mine.items():
        (user / f).write_text(text)
    assert_one_line_error(run_cli("train", recipe, "--run-dir", user), 2, str(user), "not empty", "recipe.toml")
    assert {p.name: p.read_text() for p in user.iterdir()} == mine  # no file replaced, no lock left behind
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_cli("train", recipe, "--run-dir", tmp_path / "file"), 2, "is a file")
    empty = tmp_path / "empty"  # a new or empty directory is where a run starts
    empty.mkdir()
    assert run_cli("train", recipe, "--run-dir", empty).returncode == 0
    assert (empty / "metrics.jsonl").is_file()
