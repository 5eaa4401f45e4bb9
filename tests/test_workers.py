"""Distributed prepare: work units tokenized by N workers (processes, a SLURM array's tasks, torchrun's ranks) give
the same data as one worker; finished units survive a killed worker; the merge names unfinished units; torchrun
jobs on unprepared data prepare on every rank without waiting on a collective."""
import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SHARED, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from test_distributed import torchrun
from test_formats import _moby_docs
from tstcli.prep.prepare import prepare
from tstcli.prep.work import Worker

CORPUS = SHARED / "corpus"  # six files of 0.5-3.6 MB: six work units of data.unit_mb = 1


def _recipe(tmp_path, data_dir, **overrides):
    """A BPE trained on 1M characters of the shared corpus (trained once, by whichever worker comes first)."""
    return write_recipe(tmp_path / "r.toml", small_recipe(data_dir, **{
        "data.sources": [str(CORPUS)], "data.tokenizer_train_chars": 1_000_000, "data.unit_mb": 1, **overrides}))


def _tst(*args):
    return subprocess.Popen([sys.executable, "-m", "tstcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _prepared(data_dir):
    manifest = (data_dir / "manifest.json").read_bytes()
    files = {p.name: p.read_bytes() for p in data_dir.glob("*.bin")} | {"tokenizer.json":
                                                                         (data_dir / "tokenizer.json").read_bytes()}
    return manifest, files


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    recipe = _recipe(tmp, tmp / "one")
    r = run_cli("prepare", recipe)
    assert r.returncode == 0, r.stderr
    return tmp, recipe, _prepared(tmp / "one")


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_n_workers_prepare_the_same_data_as_one(one_worker, tmp_path, n):
    _, _, expected = one_worker
    recipe = _recipe(tmp_path, tmp_path / "data")
    procs = [_tst("prepare", recipe, "--worker", i, "--workers", n) for i in range(n)]  # at once, as an array would
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert not (tmp_path / "data" / "manifest.json").exists()  # workers do not merge
    merged = run_cli("prepare", recipe, "--workers", n, "--merge", "--json")
    assert merged.returncode == 0, merged.stderr
    assert _prepared(tmp_path / "data") == expected  # byte for byte: manifest, shards, tokenizer
    assert not (tmp_path / "data" / ".prepare-work").exists()


@pytest.mark.slow
def test_merge_names_unfinished_units_and_a_rerun_finishes(one_worker, tmp_path):
    _, _, expected = one_worker
    recipe = _recipe(tmp_path, tmp_path / "data")
    first = run_cli("prepare", recipe, "--worker", 0, "--workers", 2, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["units"] == {"total": 6, "tokenized_here": 3, "unfinished": 3}
    early = run_cli("prepare", recipe, "--workers", 2, "--merge")
    assert_one_line_error(early, 3, "3 of 6 work units are unfinished", "u000000", "[worker 1]", "--merge")
    assert not (tmp_path / "data" / "manifest.json").exists()
    again = run_cli("prepare", recipe, "--worker", 0, "--workers", 2, "--json")  # finished units are not redone
    assert json.loads(again.stdout)["units"]["tokenized_here"] == 0
    assert run_cli("prepare", recipe, "--worker", 1, "--workers", 2).returncode == 0
    assert run_cli("prepare", recipe, "--workers", 2, "--merge").returncode == 0
    assert _prepared(tmp_path / "data") == expected


@pytest.mark.slow
def test_a_killed_worker_leaves_its_finished_units_and_the_rerun_gives_the_same_data(one_worker, tmp_path):
    _, _, expected = one_worker
    data = tmp_path / "data"
    recipe = _recipe(tmp_path, data)
    p = _tst("prepare", recipe)
    deadline = time.time() + 300
    while not list((data / ".prepare-work" / "units").glob("*.json")):
        assert p.poll() is None and time.time() < deadline, p.stderr.read()
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # no handler runs: a partial unit may be left on disk
    p.wait()
    done = len(list((data / ".prepare-work" / "units").glob("*.json")))
    again = run_cli("prepare", recipe)
    assert again.returncode == 0, again.stderr
    assert f"tokenizing {6 - done} of 6 work units" in again.stderr
    assert _prepared(data) == expected


@pytest.mark.parametrize("bad", [("--worker", 2, "--workers", 2), ("--worker", 0), ("--workers", 2),
                                 ("--workers", 2, "--worker", 0, "--force")])
def test_bad_worker_options_are_one_line(tmp_path, bad):
    assert_one_line_error(run_cli("prepare", _recipe(tmp_path, tmp_path / "d"), *bad), 2, "--worker")


@pytest.mark.slow
def test_large_parquet_files_split_into_row_group_units(small_data, tmp_path):
    docs = _moby_docs() * 3
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet", row_group_size=10)
    cfg = small_recipe(tmp_path / "one", **{"data.sources": [str(tmp_path / "c.parquet")], "data.unit_mb": 1,
                                            "data.tokenizer": str(small_data / "tokenizer.json")}).data
    assert (tmp_path / "c.parquet").stat().st_size > 10 ** 6  # larger than a unit: cut into row groups
    one = prepare(cfg, tmp_path / "one", log=lambda *_: None).manifest
    assert len(one["splits"]["train"]["shards"]) > 3  # several units, a shard each
    two = tmp_path / "two"
    for w in (Worker(0, 2, merge=False), Worker(1, 2, merge=False), Worker(0, 2, tokenize=False)):
        out = prepare(cfg, two, log=lambda *_: None, worker=w)
    assert out.manifest == one
    assert one["splits"]["train"]["documents"] + one["splits"]["val"]["documents"] == len(docs)


@pytest.mark.slow
def test_torchrun_prepares_on_every_rank_and_trains_without_a_collective_timeout(one_worker, tmp_path):
    """Unprepared data under torchrun with distributed.timeout_s = 2, far shorter than training a BPE and tokenizing
    six files: both ranks tokenize their units, rank 0 merges, nobody waits in a collective meanwhile."""
    _, _, expected = one_worker
    recipe = _recipe(tmp_path, tmp_path / "data", **{"distributed.timeout_s": 2, "train.steps": 2})
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tokenizing 3 of 6 work units" in r.stderr and "worker 1 of 2" in r.stderr
    assert _prepared(tmp_path / "data") == expected
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == [1, 2]
    # `torchrun -m tstcli prepare` alone: the same data again
    r = torchrun(2, "prepare", _recipe(tmp_path, tmp_path / "again"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _prepared(tmp_path / "again") == expected


@pytest.mark.slow
def test_streamed_hub_sources_give_the_same_data_and_keep_one_file_on_disk(small_data, tmp_path, monkeypatch):
    """data.stream: hub files are listed with their sizes, downloaded one at a time when their unit (or the BPE
    sample) reads them, and deleted after; the data equals that of the same files read locally."""
    from tstcli.prep import hub
    local = tmp_path / "files"
    local.mkdir()
    names = ["a/moby.jsonl.gz", "a/kjv.txt.gz", "b/sotu.jsonl.gz"]
    for name, src in zip(names, ["moby_dick.jsonl.gz", "kjv.txt.gz", "sotu.jsonl.gz"]):
        (local / name).parent.mkdir(exist_ok=True)
        (local / name).write_bytes((CORPUS / src).read_bytes())
    present = []

    def download_to(repo_id, filename, revision, directory, what):
        directory.mkdir(parents=True, exist_ok=True)
        present.append(len(list(directory.rglob("*.gz"))))  # files of the scratch folder before this one
        out = directory / filename.replace("/", "_")
        out.write_bytes((local / filename).read_bytes())
        return str(out)

    monkeypatch.setattr(hub, "matching_files", lambda repo, pattern, *a: sorted(
        n for n in names if __import__("fnmatch").fnmatch(n, pattern)))
    monkeypatch.setattr(hub, "file_sizes", lambda repo, ns, *a: [(local / n).stat().st_size for n in ns])
    monkeypatch.setattr(hub, "download_to", download_to)
    monkeypatch.setattr(hub, "dataset_file", lambda *a: pytest.fail("a streamed file went through the hub cache"))
    tok = {"data.tokenizer": "bpe", "data.tokenizer_train_chars": 500_000}
    streamed = small_recipe(tmp_path / "s", **tok, **{"data.sources": ["hf://datasets/o/n/*/*.gz"],
                                                      "data.stream": True}).data
    m = prepare(streamed, tmp_path / "s", log=lambda *_: None).manifest
    assert present and max(present) == 0  # never more than the file being read
    assert not list((tmp_path / "s").rglob("*.gz"))
    assert [s["origin"] for s in m["sources"]] == [f"hf://datasets/o/n/{n}" for n in sorted(names)]
    plain = small_recipe(tmp_path / "p", **tok, **{"data.sources": [str(local / n) for n in sorted(names)]}).data
    p = prepare(plain, tmp_path / "p", log=lambda *_: None).manifest
    assert m["splits"] == p["splits"] and m["tokenizer"]["sha256"] == p["tokenizer"]["sha256"]


def test_a_merge_before_any_worker_names_every_unit_and_trains_no_tokenizer(tmp_path):
    r = run_cli("prepare", _recipe(tmp_path, tmp_path / "d"), "--workers", 4, "--merge")
    assert_one_line_error(r, 3, "6 of 6 work units are unfinished", "and 1 more")
    assert "training a byte-level BPE" not in r.stderr and not (tmp_path / "d" / ".prepare-work" / "tokenizer.json").exists()


@pytest.mark.slow
def test_prepare_never_imports_torch(one_worker):
    """Every worker and the merge start in a fraction of a second: importing torch alone costs about one."""
    tmp, recipe, _ = one_worker
    code = ("import sys\nfrom tstcli.cli.app import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\nassert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code, "prepare", str(recipe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


FAKE_SBATCH = r'''#!/usr/bin/env python3
"""A stand-in for sbatch: runs --wrap'd jobs here, array tasks one after another with SLURM_ARRAY_TASK_ID set."""
import os, subprocess, sys
args = sys.argv[1:]
opt = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--") and "=" in a}
with open(os.environ["FAKE_SBATCH_LOG"], "a") as log:
    log.write(" ".join(a for a in args if not a.startswith("--wrap")) + "\n")
lo, hi = map(int, opt["--array"].split("-")) if "--array" in opt else (None, None)
for task in ([None] if lo is None else range(lo, hi + 1)):
    env = {**os.environ, **({"SLURM_ARRAY_TASK_ID": str(task)} if task is not None else {})}
    if subprocess.run(["bash", "-c", opt["--wrap"]], env=env, stdout=sys.stderr).returncode:  # a job's output: a file
        sys.exit(1)
print("4242")
'''


@pytest.mark.slow
def test_the_slurm_example_script_prepares_the_same_data(one_worker, tmp_path):
    """examples/slurm-prepare.sh, with a fake sbatch that runs its jobs here: 3 array tasks, then the merge."""
    _, _, expected = one_worker
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "tst").write_text(f"#!/bin/bash\nexec {sys.executable} -m tstcli \"$@\"\n")
    (bin_dir / "tst").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {**__import__("os").environ, "PATH": f"{bin_dir}:{__import__('os').environ['PATH']}",
           "FAKE_SBATCH_LOG": str(log)}
    recipe = _recipe(tmp_path, tmp_path / "data")
    r = subprocess.run(["bash", str(ROOT / "examples" / "slurm-prepare.sh"), str(recipe), "3"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    jobs = log.read_text().splitlines()
    assert "--array=0-2" in jobs[0] and "--dependency=afterok:4242" in jobs[1]
    assert _prepared(tmp_path / "data") == expected


@pytest.mark.slow
def test_a_merge_cut_short_during_install_finishes_on_the_rerun(one_worker, tmp_path, monkeypatch):
    """Killed after the shards moved into the data directory but before the manifest: the re-run neither deletes
    the moved shards nor makes another tokenizer, and gives the same data."""
    from tstcli.prep import work
    _, _, expected = one_worker
    recipe = _recipe(tmp_path, tmp_path / "data")
    for i in range(2):
        assert run_cli("prepare", recipe, "--worker", i, "--workers", 2).returncode == 0
    cfg = small_recipe(tmp_path / "data", **{"data.sources": [str(CORPUS)], "data.tokenizer_train_chars": 1_000_000,
                                             "data.unit_mb": 1}).data

    def crash(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(work.shutil, "copyfile", crash)  # the tokenizer's copy comes after the shards' moves
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tmp_path / "data", log=lambda *_: None, worker=Worker(0, 2, tokenize=False))
    assert list((tmp_path / "data").glob("train-*.bin")) and not (tmp_path / "data" / "manifest.json").exists()
    monkeypatch.undo()
    again = run_cli("prepare", recipe, "--workers", 2, "--merge")
    assert again.returncode == 0, again.stderr
    assert "training a byte-level BPE" not in again.stderr
    assert _prepared(tmp_path / "data") == expected


@pytest.mark.slow
def test_a_unit_claimed_by_another_process_is_waited_for_then_taken_over(one_worker, tmp_path):
    """A second process on the same work (a requeued task, a lone `tst prepare` beside an array) never writes a
    unit another process holds; once the holder is gone without finishing it, the unit is taken over."""
    import fcntl
    import os
    _, _, expected = one_worker
    data = tmp_path / "data"
    recipe = _recipe(tmp_path, data)
    p = _tst("prepare", recipe)
    deadline = time.time() + 300
    while not (data / ".prepare-work" / "inputs.json").exists():  # the work directory is made (then a BPE trained)
        assert p.poll() is None and time.time() < deadline, p.stderr.read()
        time.sleep(0.01)
    (data / ".prepare-work" / "units").mkdir(exist_ok=True)
    fd = os.open(data / ".prepare-work" / "units" / "u000005.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a process tokenizing the last unit would
    while len(list((data / ".prepare-work" / "units").glob("*.json"))) < 5:  # every other unit finished
        assert p.poll() is None and time.time() < deadline, p.stderr.read()
        time.sleep(0.2)
    time.sleep(3)
    assert p.poll() is None, "finished without the claimed unit"
    assert not (data / ".prepare-work" / "units" / "u000005.json").exists()
    os.close(fd)  # the holder dies without finishing: its flock goes with it
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "1 work units are being tokenized by another process" in err
    assert _prepared(data) == expected


def test_small_files_share_a_unit_and_a_large_one_stands_alone():
    from tstcli.prep import sources, units
    files = sources.resolve([str(CORPUS)])  # sorted: factbook 1.7, kjv 1.2, kjv_sample 1.0, moby 0.5, python 3.0,
    plan = units.plan([(None, files)], 4 * 10 ** 6)  # sotu 3.6 MB
    assert [[f.origin.rsplit("/", 1)[1] for f in u.files] for u in plan] == [
        ["factbook.jsonl.gz", "kjv.txt.gz", "kjv_sample.txt"], ["moby_dick.jsonl.gz", "python311_docs.jsonl.gz"],
        ["sotu.jsonl.gz"]]
    assert [u.size for u in plan] == [sum(f.size for f in u.files) for u in plan]
