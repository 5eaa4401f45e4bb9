"""Shared fixtures: real corpora from ../shared/data, a small prepared data dir, and a way to run the real CLI."""
import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Tests use ../shared/data only: never wait on a network the CI machine does not have.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Inductor's on-disk cache (/tmp/torchinductor_$USER) does not key its kernels by ATEN_CPU_CAPABILITY (torch 2.13):
# under a forced ISA (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine) a kernel another process compiled computes
# garbage (indices out of bounds, NaN) or crashes, and the kernels this run compiles do the same to later runs. A run
# with a forced ISA keeps a cache of its own.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}")
# The suite runs as many test processes as cores (pytest-xdist), each starting `tst` processes: one thread each, or
# every OpenMP region of every process waits on threads whose cores the other processes hold (measured: `tst sample`
# of a small export 4.7 s with two threads beside another busy process, 3.1 s with one). Before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A test runner started in the background by a non-interactive shell (`pytest &` in a script) inherits SIGINT
# ignored, and every `tst` it starts would too, so the Ctrl-C tests could not deliver one. They send it as a terminal
# does to its foreground job: undo the inherited "ignore" (a caught signal is reset to the default in a child).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from tstcli import recipe as recipes
from tstcli.prep.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MOBY = SHARED / "corpus" / "moby_dick.jsonl.gz"

# A model small enough that a dozen steps take a second or two on 2 CPU cores.
SMALL = {
    "run": {"name": "small", "seed": 3},
    "data": {"sources": [str(MOBY)], "vocab_size": 512, "val_fraction": 0.05},
    "model": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64},
    "train": {"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2, "dtype": "fp32",
              "compile": False, "log_every": 1, "threads": 1},
    "tst": {"bag_size": 3, "ratio": 0.5},
    "eval": {"every": 4, "batches": 2},
    "checkpoint": {"every": 2, "keep": 0},
}


def small_recipe(data_dir, **overrides) -> recipes.Recipe:
    """The SMALL recipe with `section.key` overrides, e.g. small_recipe(d, **{"tst.bag_size": 1})."""
    table = {k: dict(v) for k, v in SMALL.items()}
    table["data"]["dir"] = str(data_dir)
    for path, value in overrides.items():
        section, key = path.split(".")
        table.setdefault(section, {})[key] = value
    return recipes.from_dict(table, "test recipe")


def write_recipe(path: Path, r: recipes.Recipe) -> Path:
    path.write_text(recipes.to_toml(r))
    return path


def resumed_from(run_dir: Path, copy: Path, step: int) -> subprocess.CompletedProcess:
    """`tst resume` of a copy of `run_dir` that lost every checkpoint after `step` (as if it died right after it)."""
    shutil.copytree(run_dir, copy)
    for ckpt in (copy / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    return run_cli("resume", copy)


def train_small(data_dir, tmp: Path, run_name: str = "run", **overrides) -> tuple[Path, Path]:
    """Train the SMALL recipe (with overrides) in one process through the real CLI; (recipe path, run dir)."""
    recipe = write_recipe(tmp / "r.toml", small_recipe(data_dir, **overrides))
    r = run_cli("train", recipe, "--run-dir", tmp / run_name)
    assert r.returncode == 0, r.stderr
    return recipe, tmp / run_name


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """Moby-Dick prepared once (BPE 512) for the whole session."""
    d = tmp_path_factory.mktemp("small-data")
    prepare(small_recipe(d).data, d, log=lambda *_: None)
    return d


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(dir)` once per test session, shared by every pytest-xdist worker (each is its own process): the
    directory sits beside the workers' own base temporary directories, and a file lock lets the first worker build it
    while the others wait, then find it done (pytest-xdist's documented pattern). A build that fails leaves no
    `.done`, so the next worker tries again and fails with its own message. Without xdist: this session's temp dir."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"built-once-{name}"
    from filelock import FileLock  # huggingface-hub's dependency, so always installed with tst

    with FileLock(f"{root}.lock"):
        if not (root / ".done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            build(root)
            (root / ".done").touch()
    return root


def _fingerprint(path: Path) -> list:
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def _unchanged(path: Path):
    """Yields `path`, then fails the session if a test wrote into it (tests get copies for that)."""
    before = _fingerprint(path)
    yield path
    assert _fingerprint(path) == before, f"a test modified the shared {path}: use its *_copy fixture"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """ONE finished run of the SMALL recipe (12 steps, checkpoints every 2 steps, all kept), trained once per test
    session through the real CLI (`tst train`, which prepares its data in the same shared folder). Read-only: a test
    that changes anything takes `finished_run_copy`."""
    def build(root):
        recipe = write_recipe(root / "r.toml", small_recipe(root / "data"))
        r = run_cli("train", recipe, "--run-dir", root / "run")
        assert r.returncode == 0, r.stderr
    yield from _unchanged(_built_once(tmp_path_factory, "finished-run", build) / "run")


@pytest.fixture(scope="session")
def finished_export(finished_run, tmp_path_factory):
    """`tst export` of `finished_run` (fp32, its last checkpoint), made once per session. Read-only, as above."""
    def build(root):
        r = run_cli("export", finished_run, "--out", root / "hf")
        assert r.returncode == 0, r.stderr
    yield from _unchanged(_built_once(tmp_path_factory, "finished-export", build) / "hf")


@pytest.fixture
def finished_run_copy(finished_run, tmp_path) -> Path:
    """This test's own copy of `finished_run` (tmp_path/run), free to modify."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture
def finished_export_copy(finished_export, tmp_path) -> Path:
    """This test's own copy of `finished_export` (tmp_path/export), free to modify."""
    return Path(shutil.copytree(finished_export, tmp_path / "export"))


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real command line (`python -m tstcli`, the same entry point as `tst`)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tstcli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, timeout=timeout)


def wait_until(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll `cond()` until it holds. Fails naming `what` on timeout, or with the process's exit code and stderr
    (when piped) if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            err = proc.communicate()[1] if proc.stderr is not None else ""
            raise AssertionError(f"exited {proc.returncode} before {what}: {(err or '')[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# The suite runs a file per test process (pyproject's addopts) and ends when the last file does: the files that take
# minutes start first, so that the short ones fill the gaps instead of one long file running alone at the end.
LONGEST_FIRST = ("test_e2e.py", "test_export.py", "test_distributed.py", "test_eval_ranks.py", "test_gpu_check.py",
                 "test_documents.py", "test_anneal.py", "test_optimizers.py", "test_workers.py", "test_reliability.py",
                 "test_float8.py", "test_exit_codes.py", "test_pins.py", "test_eval.py", "test_sample.py",
                 "test_eval_parity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept
