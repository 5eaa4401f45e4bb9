"""`tst eval` against lm-evaluation-harness itself (the acceptance test of issue #4).

The tiny model is exported, then scored by the harness's own HFLM through task YAMLs that point at the local files
of ../shared/data (converted to the Hugging Face field layout the harness's tasks expect; HellaSwag uses the
harness's own `utils.py`), and by `tst eval` on the run directory. Per item the log-likelihoods agree to 1e-4 and
the predicted choices (acc and acc_norm) are identical.
"""
import json
import shutil
from pathlib import Path

import pytest

from conftest import SHARED, run_cli, small_recipe, write_recipe

pytestmark = pytest.mark.slow  # lm-evaluation-harness itself, on a model trained for the purpose

LIMIT = 25
MMLU_SUBJECTS = ["abstract_algebra", "high_school_us_history", "virology"]


def _write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _harness_tasks(tmp: Path) -> list[str]:
    """Task YAMLs for lm-eval over local files, the harness's prompts and metrics unchanged."""
    import lm_eval
    import csv
    hs_utils = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "utils.py"
    shutil.copy(hs_utils, tmp / "utils.py")
    common = "output_type: multiple_choice\ndataset_path: json\n"
    acc_norm = ("metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    (tmp / "tst_hellaswag.yaml").write_text(
        f"task: tst_hellaswag\n{common}dataset_kwargs:\n  data_files:\n    validation: "
        f"{SHARED / 'hellaswag' / 'hellaswag_val.jsonl.gz'}\nvalidation_split: validation\n"
        "process_docs: !function utils.process_docs\ndoc_to_text: \"{{query}}\"\ndoc_to_target: \"{{label}}\"\n"
        f"doc_to_choice: \"choices\"\n{acc_norm}")
    names = ["tst_hellaswag"]
    for arc in ("Easy", "Challenge"):
        rows = [json.loads(l) for l in open(SHARED / "arc" / f"ARC-{arc}-Test.jsonl")]
        hf_rows = [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
                    "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                                "label": [c["label"] for c in r["question"]["choices"]]}} for r in rows]
        _write_jsonl(tmp / f"arc_{arc}.jsonl", hf_rows)
        name = f"tst_arc_{arc.lower()}"
        (tmp / f"{name}.yaml").write_text(
            f"task: {name}\n{common}dataset_kwargs:\n  data_files:\n    test: {tmp / f'arc_{arc}.jsonl'}\n"
            "test_split: test\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
            "doc_to_target: \"{{choices.label.index(answerKey)}}\"\ndoc_to_choice: \"{{choices.text}}\"\n" + acc_norm)
        names.append(name)
    for subject in MMLU_SUBJECTS:
        with open(SHARED / "mmlu" / "test" / f"{subject}_test.csv", newline="") as fh:
            rows = [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                    for r in csv.reader(fh)]
        _write_jsonl(tmp / f"mmlu_{subject}.jsonl", rows)
        name = f"tst_mmlu_{subject}"
        desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\\n\\n"
        (tmp / f"{name}.yaml").write_text(
            f"task: {name}\n{common}dataset_kwargs:\n  data_files:\n    test: {tmp / f'mmlu_{subject}.jsonl'}\n"
            f"test_split: test\ndescription: \"{desc}\"\n"
            "doc_to_text: \"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}"
            "\\nD. {{choices[3]}}\\nAnswer:\"\ndoc_to_choice: [\"A\", \"B\", \"C\", \"D\"]\ndoc_to_target: answer\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
        names.append(name)
    return names


@pytest.fixture(scope="module")
def exported(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    r = small_recipe(small_data, **{"train.steps": 30, "model.max_seq_len": 512})
    res = run_cli("train", write_recipe(tmp / "r.toml", r), "--run-dir", tmp / "run")
    assert res.returncode == 0, res.stderr
    res = run_cli("export", tmp / "run", "--out", tmp / "hf")
    assert res.returncode == 0, res.stderr
    return tmp


def test_tst_eval_matches_lm_eval_harness_item_by_item(exported, tmp_path):
    import os
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = _harness_tasks(tmp_path)
    harness = simple_evaluate(model="hf", model_args=f"pretrained={exported / 'hf'},dtype=float32",
                              tasks=names, task_manager=TaskManager(include_path=str(tmp_path)), limit=LIMIT,
                              batch_size=8, device="cpu", log_samples=True)
    samples_file = tmp_path / "tst_samples.jsonl"
    r = run_cli("eval", exported / "run", "--bench", "hellaswag,arc,mmlu", "--limit", LIMIT,
                "--data-dir", SHARED, "--samples", samples_file, "--json")
    assert r.returncode == 0, r.stderr
    ours = [json.loads(l) for l in samples_file.read_text().splitlines()]
    mapping = {"tst_hellaswag": ("hellaswag", None), "tst_arc_easy": ("arc_easy", None),
               "tst_arc_challenge": ("arc_challenge", None),
               **{f"tst_mmlu_{s}": ("mmlu", s) for s in MMLU_SUBJECTS}}
    compared = 0
    for theirs_name, (task, subject) in mapping.items():
        mine = [x for x in ours if x["task"] == task and x.get("subject") == subject]
        theirs = sorted(harness["samples"][theirs_name], key=lambda s: s["doc_id"])
        assert len(mine) == len(theirs) == LIMIT, theirs_name
        for a, b in zip(mine, theirs):
            lls = [resp[0] for resp in b["filtered_resps"]]
            assert a["arguments"] == [list(x) for x in b["arguments"]], (theirs_name, b["doc_id"])
            assert max(abs(x - y) for x, y in zip(a["loglikelihoods"], lls)) < 1e-4, (theirs_name, b["doc_id"])
            assert a["acc"] == b["acc"], (theirs_name, b["doc_id"])
            if "acc_norm" in b:
                assert a["acc_norm"] == b["acc_norm"], (theirs_name, b["doc_id"])
            compared += 1
        res = json.loads(r.stdout)["results"][task]
        if subject is None:
            assert res["acc"] == pytest.approx(harness["results"][theirs_name]["acc,none"], abs=1e-9)
            if "acc_norm" in res:
                assert res["acc_norm"] == pytest.approx(harness["results"][theirs_name]["acc_norm,none"], abs=1e-9)
        else:
            assert res["subjects"][subject]["acc"] == pytest.approx(harness["results"][theirs_name]["acc,none"])
    assert compared == LIMIT * (3 + len(MMLU_SUBJECTS))
    # the compared ARC items include both label formats: letters and ARC-Easy's numeric "1".."4" (item 14)
    labels = {json.loads(l)["answerKey"] for l in list(open(SHARED / "arc" / "ARC-Easy-Test.jsonl"))[:LIMIT]}
    assert labels & set("ABCD") and labels & set("1234")


def _with_train_split(tmp: Path, task: str, eval_key: str, train_file: Path) -> None:
    """Point a local harness task YAML's training split (the few-shot pool) at `train_file`."""
    y = (tmp / f"{task}.yaml").read_text()
    y = y.replace(f"    {eval_key}: ", f"    train: {train_file}\n    {eval_key}: ")
    (tmp / f"{task}.yaml").write_text(y.replace(f"{eval_key}_split: {eval_key}",
                                                f"{eval_key}_split: {eval_key}\ntraining_split: train"))


def _few_shot_both(exported, tmp: Path, task: str, bench: str, k: int, limit: int, data_dir: Path):
    """(ours, theirs): per-item samples of `tst eval` and of the harness's HFLM, k-shot, first `limit` items."""
    import os
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    h = simple_evaluate(model="hf", model_args=f"pretrained={exported / 'hf'},dtype=float32", tasks=[task],
                        task_manager=TaskManager(include_path=str(tmp)), limit=limit, num_fewshot=k,
                        batch_size=8, device="cpu", log_samples=True)
    theirs = sorted(h["samples"][task], key=lambda s: s["doc_id"])
    samples = tmp / "s.jsonl"
    r = run_cli("eval", exported / "hf", "--bench", bench, "--limit", limit, "--num-fewshot", k,
                "--data-dir", data_dir, "--samples", samples)
    assert r.returncode == 0, r.stderr
    ours = [json.loads(l) for l in samples.read_text().splitlines()]
    assert len(ours) == len(theirs) == limit
    for a, b in zip(ours, theirs):
        assert a["arguments"] == [list(x) for x in b["arguments"]]  # the same prompts, shots included, to the byte
        assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])
    return ours, theirs


def test_arc_few_shot_draws_the_harness_shots(exported, tmp_path):
    """--num-fewshot 3 on ARC-Easy: the harness's seeded sampler over the training split, reproduced exactly."""
    _harness_tasks(tmp_path)
    rows = [json.loads(l) for l in open(SHARED / "arc" / "ARC-Easy-Train.jsonl")]
    _write_jsonl(tmp_path / "arc_train.jsonl", [
        {"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
         "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                     "label": [c["label"] for c in r["question"]["choices"]]}} for r in rows])
    _with_train_split(tmp_path, "tst_arc_easy", "test", tmp_path / "arc_train.jsonl")
    ours, theirs = _few_shot_both(exported, tmp_path, "tst_arc_easy", "arc_easy", 3, 12, SHARED)
    for a, b in zip(ours, theirs):
        assert max(abs(x - y[0]) for x, y in zip(a["loglikelihoods"], b["filtered_resps"])) < 1e-4


def test_hellaswag_few_shot_draws_the_harness_shots(exported, tmp_path):
    """--num-fewshot 2 on HellaSwag: shots from its train split (stood in for by validation items 100-139, since
    ../shared/data has no HellaSwag train file) with the harness's seeded sampler and preprocessing, exactly."""
    import gzip

    _harness_tasks(tmp_path)
    with gzip.open(SHARED / "hellaswag" / "hellaswag_val.jsonl.gz", "rt") as fh:
        train = [json.loads(line) for line in fh][100:140]
    local = tmp_path / "data"
    (local / "hellaswag").mkdir(parents=True)
    shutil.copy(SHARED / "hellaswag" / "hellaswag_val.jsonl.gz", local / "hellaswag")
    _write_jsonl(local / "hellaswag" / "hellaswag_train.jsonl", train)
    _with_train_split(tmp_path, "tst_hellaswag", "validation", local / "hellaswag" / "hellaswag_train.jsonl")
    ours, theirs = _few_shot_both(exported, tmp_path, "tst_hellaswag", "hellaswag", 2, 8, local)
    for a, b in zip(ours, theirs):
        # With the same prompts, the two fp32 implementations agree to ~6e-3 on two-shot contexts of a few hundred
        # tokens (log-likelihoods near -100; exact on the shortest item); our own batch-size changes move them
        # by 1.5e-5, so this is the harness's HF forward vs ours over longer sequences, not the text.
        assert max(abs(x - y[0]) for x, y in zip(a["loglikelihoods"], b["filtered_resps"])) < 2e-2
