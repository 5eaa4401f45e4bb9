"""Run multiple-choice benchmarks the way lm-evaluation-harness does: build prompts (with few-shot examples drawn
the harness's way), score every choice, compute acc / acc_norm with the harness's standard errors, aggregate MMLU
by subject, category and overall (a micro-average over questions)."""
from __future__ import annotations

import math
import random
from pathlib import Path

from tstcli.errors import DataError, UsageError
from tstcli.eval.datafiles import split_rows
from tstcli.eval.scoring import encode_pairs, loglikelihoods
from tstcli.eval.tasks import MMLU_SUBJECTS, Doc, Task, resolve
from tstcli.files import file_sha256

FEWSHOT_SEED = 1234  # the harness's default fewshot_seed
DEFAULT_BATCH_SIZE = 32  # sequences per forward pass (`tst eval --batch-size`, in-loop benchmarks)


def mean_stderr(xs: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """The harness's group stderr (lm_eval.api.metrics.pooled_sample_stderr)."""
    if sum(sizes) - len(sizes) <= 0:
        return float("nan")
    var = sum((n - 1) * se ** 2 * n for se, n in zip(stderrs, sizes)) / (sum(sizes) - len(sizes))
    return math.sqrt(var / sum(sizes))


def _docs(task: Task, data_dir: Path, fewshot: bool, subject: str) -> tuple[list[Doc], Path] | None:
    found = split_rows(task, data_dir, fewshot, subject)
    if found is None:
        return None
    raw, path = found
    try:
        return [task.to_doc(d) for d in raw], path
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise DataError(f"{path}: unexpected item format for {task.name} ({type(e).__name__}: {e})") from None


def _shot_text(task: Task, d: Doc) -> str:
    ctx = d.context[d.gold] if isinstance(d.context, list) else d.context
    return ctx + task.target_delimiter + d.fewshot_target


def _draw(rnd: random.Random, pool: list[Doc], k: int, eval_doc: Doc | None) -> list[Doc]:
    """lm_eval.api.samplers.ContextSampler.sample, draw for draw (the random stream must match)."""
    if eval_doc is None:
        return rnd.sample(pool, k)
    shots = [s for s in rnd.sample(pool, k + 1) if s != eval_doc][:k]
    if len(shots) < k:  # the doc appeared more than once in the pool
        shots = rnd.sample([s for s in pool if s != eval_doc], k)
    return shots


def _fewshot_prefixes(task: Task, docs: list[Doc], shots_pool: list[Doc] | None, k: int, desc: str) -> list[str]:
    if k == 0:
        return [desc] * len(docs)
    if shots_pool is None:
        raise DataError(f"{task.name}: --num-fewshot {k} needs a few-shot split, which this task does not have "
                        "(the harness draws shots from the training split, not in the local data); run it 0-shot")
    if len(shots_pool) < k + task.fewshot_draws_extra:
        raise UsageError(f"--num-fewshot {k}: {task.name}'s few-shot split holds {len(shots_pool)} examples")
    if task.fewshot_sampler == "first_n":
        shots = [shots_pool[:k]] * len(docs)
    else:  # the harness's ContextSampler: one Random(1234) per task, k draws per document, in document order
        rnd = random.Random(FEWSHOT_SEED)
        shots = [_draw(rnd, shots_pool, k, doc if task.fewshot_draws_extra else None) for doc in docs]
    return [desc + "".join(_shot_text(task, s) + task.fewshot_delimiter for s in ss) for ss in shots]


def run_task(task: Task, model, encode_many, prefix_id: int, max_len: int, data_dir: Path, limit: int | None,
             num_fewshot: int, batch_size: int, share=None) -> tuple[dict, list[dict], dict]:
    """Returns (metrics, per-item samples, {data file: sha256}); `share`: this rank's part (see `loglikelihoods`)."""
    subjects = task.subjects or ("",)
    items, files = [], {}
    for subject in subjects:
        docs, path = _docs(task, data_dir, False, subject)
        files[str(path)] = file_sha256(path)
        docs = docs[:limit] if limit else docs
        pool = None
        if num_fewshot and (found := _docs(task, data_dir, True, subject)) is not None:
            pool, fpath = found
            files[str(fpath)] = file_sha256(fpath)
        for doc, prefix in zip(docs, _fewshot_prefixes(task, docs, pool, num_fewshot, task.description(subject))):
            items.append((subject, doc, prefix))
    pairs_of, owners, texts = [], [], []
    for n, (_, doc, prefix) in enumerate(items):
        if isinstance(doc.context, list):  # one context per choice, the same continuation
            pairs = [(prefix + c, task.target_delimiter + doc.choices[0]) for c in doc.context]
        else:
            pairs = [(prefix + doc.context, task.target_delimiter + ch) for ch in doc.choices]
        texts.append(pairs)
        pairs_of += pairs
        owners += [n] * len(pairs)
    requests = encode_pairs(encode_many, pairs_of, prefix_id)
    lls = loglikelihoods(model, requests, max_len, batch_size, desc=task.name, share=share)
    per_item: list[list[float]] = [[] for _ in items]
    for n, ll in zip(owners, lls):
        per_item[n].append(ll)
    samples = []
    for n, ((subject, doc, _), ll) in enumerate(zip(items, per_item)):
        pred = max(range(len(ll)), key=lambda i: ll[i])
        row = {"task": task.name, "doc": n, "gold": doc.gold, "loglikelihoods": ll, "pred": pred,
               "acc": float(pred == doc.gold), "arguments": [list(p) for p in texts[n]]}
        if "acc_norm" in task.metrics:
            normed = [x / len(c) for x, c in zip(ll, doc.choices)]
            row["pred_norm"] = max(range(len(normed)), key=lambda i: normed[i])
            row["acc_norm"] = float(row["pred_norm"] == doc.gold)
        if subject:
            row["subject"] = subject
        samples.append(row)
    return _aggregate(task, samples), samples, files


def _summary(rows: list[dict], metrics: tuple[str, ...]) -> dict:
    out = {"n": len(rows)}
    for m in metrics:
        xs = [r[m] for r in rows]
        out[m] = sum(xs) / len(xs) if xs else float("nan")
        out[f"{m}_stderr"] = mean_stderr(xs)
    return out


def _aggregate(task: Task, samples: list[dict]) -> dict:
    result = _summary(samples, task.metrics)
    if task.name != "mmlu":
        return result
    subjects = {}
    for s in sorted({r["subject"] for r in samples}):
        subjects[s] = _summary([r for r in samples if r["subject"] == s], task.metrics)
    categories = {}
    for cat in sorted(set(MMLU_SUBJECTS.values())):
        members = [subjects[s] for s in subjects if MMLU_SUBJECTS[s] == cat]
        if members:
            n = sum(m["n"] for m in members)
            categories[cat] = {"n": n, "acc": sum(m["acc"] * m["n"] for m in members) / n,
                               "acc_stderr": pooled_stderr([m["acc_stderr"] for m in members],
                                                           [m["n"] for m in members])}
    result["acc_stderr"] = pooled_stderr([m["acc_stderr"] for m in subjects.values()],
                                         [m["n"] for m in subjects.values()])
    result["categories"], result["subjects"] = categories, subjects
    return result


def check_available(names: list[str], data_dir: Path) -> None:
    """Find and read every evaluation split the tasks need (local file or the hub) before any scoring: a missing
    or unreadable one is one DataError line naming it."""
    for task in resolve(names):
        for subject in task.subjects or ("",):
            _docs(task, data_dir, False, subject)


def evaluate(model, encode_many, prefix_id: int, max_len: int, names: list[str], data_dir: Path, limit: int | None,
             num_fewshot: int, batch_size: int, share=None) -> tuple[dict, list[dict], dict]:
    results, samples, files = {}, [], {}
    for task in resolve(names):
        res, s, f = run_task(task, model, encode_many, prefix_id, max_len, data_dir, limit, num_fewshot, batch_size,
                             share)
        results[task.name], files = res, {**files, **f}
        samples += s
    return results, samples, files
