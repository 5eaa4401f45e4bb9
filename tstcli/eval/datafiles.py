"""Find a benchmark split: the local file under --data-dir first, otherwise the harness's Hugging Face dataset
(downloaded once into huggingface-hub's cache, read from there offline afterwards). Returns rows in the local
files' format, so scoring never knows where they came from."""
from __future__ import annotations

from pathlib import Path

from tstcli.errors import DataError, UsageError
from tstcli.eval.tasks import Task
from tstcli.prep import hub

def default_data_dir(env) -> Path:
    """Where benchmark files are looked for first: $TST_EVAL_DATA (from the environment mapping `env`), else
    ~/.cache/tst/eval. Files not there come from the Hugging Face hub."""
    return Path(env.get("TST_EVAL_DATA") or Path.home() / ".cache" / "tst" / "eval")


OFFLINE_HINT = ("pass --data-dir with local copies (layout in docs/evaluation.md, 'Benchmark files'), or run once "
                "with network access")


def read_parquet(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{path}: reading the hub's parquet files needs pyarrow: pip install 'tst[eval]' "
                         "(or pass --data-dir with local copies)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})".splitlines()[0]) from None


def split_rows(task: Task, data_dir: Path, fewshot: bool, subject: str) -> tuple[list[dict], Path] | None:
    """(rows, file) of the task's evaluation or few-shot split; None when the task has no such split at all."""
    rel = task.fewshot_file if fewshot else task.eval_file
    hub_file = task.hub and (task.hub.fewshot_file if fewshot else task.hub.eval_file)
    local = data_dir / rel.format(subject=subject) if rel else None
    if local is not None and (local.is_file() or not hub_file):
        return task.loader(local, subject), local  # a missing file without a hub fallback: the loader says so
    if not hub_file:
        return None
    name = hub_file.format(subject=subject)
    where = f"{local} not found, and " if local else ""
    path = hub.dataset_file(task.hub.repo, name, None, f"{task.name}: {where}hf://datasets/{task.hub.repo}/{name}",
                            OFFLINE_HINT)
    try:
        return [task.hub.to_local(row, subject) for row in read_parquet(path)], Path(path)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: unexpected columns for {task.name} ({type(e).__name__}: {e})") from None
