"""The benchmark registry: each task is a small declarative entry following lm-evaluation-harness 0.4's task YAML
(dataset files, prompt, choices, target, metrics). Local files use the layout of the project's shared data set
(`arc/ARC-Easy-Test.jsonl`, `mmlu/test/<subject>_test.csv`, ...) under `--data-dir`; tasks with a `hub` entry fall
back to the harness's own Hugging Face dataset (parquet), whose rows an adapter turns into the local format.
"""
from __future__ import annotations

import csv
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tstcli.compressed import open_bytes, what_failed
from tstcli.errors import DataError


@dataclass(frozen=True)
class Doc:
    """One evaluation item, already in the harness's terms."""
    context: str | list[str]  # one context, or one per choice (winogrande's multiple-input form)
    choices: list[str]  # continuations (without the target delimiter)
    gold: int
    fewshot_target: str = ""  # text after the context when this doc is a few-shot example
    subject: str = ""


@dataclass(frozen=True)
class HubSource:
    """The harness's dataset on the Hugging Face hub: files (may contain {subject}) and a row adapter to the local
    file format, so one `to_doc` serves both."""
    repo: str
    eval_file: str
    fewshot_file: str | None
    to_local: Callable[[dict, str], dict] = lambda row, _subject: row


@dataclass(frozen=True)
class Task:
    name: str
    eval_file: str  # relative to the data dir; may contain {subject}
    loader: Callable[[Path, str], list[dict]]
    to_doc: Callable[[dict], Doc]
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    fewshot_file: str | None = None  # None: no few-shot split in the local layout
    fewshot_sampler: str = "random"  # random (the harness's seeded sampler) or first_n (MMLU)
    # The harness passes the evaluated doc to its sampler when the few-shot split equals the test split, and both
    # are unset for tasks without a test split (HellaSwag): it then draws k + 1 shots and drops the doc itself.
    fewshot_draws_extra: bool = False
    description: Callable[[str], str] = lambda subject: ""
    subjects: tuple[str, ...] = ()
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    hub: HubSource | None = None  # where to download the data when it is not under --data-dir
    extra: dict = field(default_factory=dict)


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: benchmark file not found (pass --data-dir pointing at a copy of the data set "
                        "layout described in docs/evaluation.md)")
    return io.TextIOWrapper(open_bytes(str(path)), encoding="utf-8", newline=None if path.suffix == ".gz" else "")


def _read(path: Path, parse):
    """parse(open file) -> rows; a truncated or damaged file is one DataError naming it (gzip raises EOFError,
    zlib.error or BadGzipFile; bad bytes UnicodeDecodeError)."""
    try:
        with _open(path) as fh:
            return parse(fh)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the benchmark file ({what_failed(e)})") from None


def jsonl(path: Path, _subject: str = "") -> list[dict]:
    def parse(fh):
        try:
            return [json.loads(line) for line in fh if line.strip()]
        except ValueError as e:
            if isinstance(e, UnicodeDecodeError):
                raise
            raise DataError(f"{path}: not valid JSON lines ({e})") from None
    return _read(path, parse)


def mmlu_csv(path: Path, subject: str) -> list[dict]:
    rows = _read(path, lambda fh: list(csv.reader(fh)))
    try:
        return [{"question": r[0], "choices": r[1:5], "answer": "ABCD".index(r[5]), "subject": subject}
                for r in rows if r]
    except (IndexError, ValueError):
        raise DataError(f"{path}: expected CSV rows question,A,B,C,D,answer-letter") from None


# ---- per-task document conversions (the harness's doc_to_text / doc_to_choice / doc_to_target) ----

def hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of the WikiHow part of HellaSwag
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(d: dict) -> Doc:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    choices = [hellaswag_preprocess(e) for e in d["endings"]]
    gold = int(d["label"])
    return Doc(hellaswag_preprocess(d["activity_label"] + ": " + ctx), choices, gold, choices[gold])


def arc(d: dict) -> Doc:
    q = d["question"]
    labels = [c["label"] for c in q["choices"]]
    texts = [c["text"] for c in q["choices"]]
    gold = labels.index(d["answerKey"])
    return Doc(f"Question: {q['stem']}\nAnswer:", texts, gold, texts[gold])


def mmlu(d: dict) -> Doc:
    c = d["choices"]
    text = f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
    return Doc(text, ["A", "B", "C", "D"], d["answer"], "ABCD"[d["answer"]], d["subject"])


def boolq(d: dict) -> Doc:
    gold = int(d["answer"]) if "answer" in d else int(d["label"])  # HF boolq: `answer`; super_glue: `label`
    return Doc(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], gold, ["no", "yes"][gold])


def openbookqa(d: dict) -> Doc:
    texts, labels = d["choices"]["text"], d["choices"]["label"]
    gold = labels.index(d["answerKey"].lstrip())
    return Doc(d["question_stem"], texts, gold, texts[gold])


def piqa(d: dict) -> Doc:
    choices = [d["sol1"], d["sol2"]]
    return Doc(f"Question: {d['goal']}\nAnswer:", choices, int(d["label"]), choices[int(d["label"])])


def winogrande(d: dict) -> Doc:
    idx = d["sentence"].index("_")
    contexts = [d["sentence"][:idx] + opt for opt in (d["option1"], d["option2"])]
    target = d["sentence"][idx + 1:].strip()
    gold = {"1": 0, "2": 1}[d["answer"]]
    return Doc(contexts, [target], gold, target)


# ---- hub rows (the harness's datasets) -> the local files' rows ----

def arc_from_hub(row: dict, _subject: str) -> dict:
    """allenai/ai2_arc: `question` is the stem and `choices` is {text: [...], label: [...]}."""
    c = row["choices"]
    return {"id": row["id"], "answerKey": row["answerKey"], "question": {
        "stem": row["question"], "choices": [{"text": t, "label": lab} for t, lab in zip(c["text"], c["label"])]}}


def mmlu_from_hub(row: dict, subject: str) -> dict:
    """cais/mmlu: `choices` is a list of four and `answer` an index, as `mmlu_csv` produces."""
    return {"question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"]),
            "subject": subject}


def _arc_hub(config: str) -> HubSource:
    return HubSource("allenai/ai2_arc", f"{config}/test-00000-of-00001.parquet",
                     f"{config}/train-00000-of-00001.parquet", arc_from_hub)


MMLU_SUBJECTS = {  # subject -> category, as lm-evaluation-harness groups them
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem", "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}

TASKS = {t.name: t for t in [
    Task("hellaswag", "hellaswag/hellaswag_val.jsonl.gz", jsonl, hellaswag,
         fewshot_file="hellaswag/hellaswag_train.jsonl",  # rowanz's file name; HF labels are strings, int() reads both
         fewshot_draws_extra=True,
         hub=HubSource("Rowan/hellaswag", "data/validation-00000-of-00001.parquet",
                       "data/train-00000-of-00001.parquet")),
    Task("arc_easy", "arc/ARC-Easy-Test.jsonl", jsonl, arc, fewshot_file="arc/ARC-Easy-Train.jsonl",
         hub=_arc_hub("ARC-Easy")),
    Task("arc_challenge", "arc/ARC-Challenge-Test.jsonl", jsonl, arc, fewshot_file="arc/ARC-Challenge-Train.jsonl",
         hub=_arc_hub("ARC-Challenge")),
    Task("mmlu", "mmlu/test/{subject}_test.csv", mmlu_csv, mmlu, metrics=("acc",),
         fewshot_file="mmlu/dev/{subject}_dev.csv", fewshot_sampler="first_n", subjects=tuple(MMLU_SUBJECTS),
         description=lambda s: f"The following are multiple choice questions (with answers) about "
                               f"{s.replace('_', ' ')}.\n\n",
         hub=HubSource("cais/mmlu", "{subject}/test-00000-of-00001.parquet", "{subject}/dev-00000-of-00001.parquet",
                       mmlu_from_hub)),
    Task("boolq", "boolq/boolq_validation.jsonl.gz", jsonl, boolq, metrics=("acc",)),
    Task("openbookqa", "openbookqa/openbookqa_main_test.jsonl", jsonl, openbookqa,
         fewshot_file=None),
    Task("piqa", "piqa/piqa_validation.jsonl", jsonl, piqa),
    Task("winogrande", "winogrande/winogrande_xl_validation.jsonl", jsonl, winogrande, metrics=("acc",)),
]}
ALIASES = {"arc": ["arc_easy", "arc_challenge"],
           "paper": ["hellaswag", "arc_easy", "arc_challenge", "mmlu", "boolq", "openbookqa", "piqa", "winogrande"]}


def parse_bench(spec: str) -> list[str]:
    """Task names from `--bench`; `mmlu:SUBJECT` selects MMLU subjects (`mmlu` alone is all 57)."""
    from tstcli.errors import UsageError
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part.startswith("mmlu:"):
            if part[5:] not in MMLU_SUBJECTS:
                raise UsageError(f"--bench {part!r}: unknown MMLU subject (e.g. mmlu:anatomy)")
            names.append(part)
            continue
        expanded = ALIASES.get(part, [part])
        for n in expanded:
            if n not in TASKS:
                raise UsageError(f"--bench {part!r}: unknown benchmark (known: "
                                 f"{', '.join(list(TASKS) + list(ALIASES))})")
            if n not in names:
                names.append(n)
    return names


def resolve(names: list[str]) -> list[Task]:
    """Tasks to run, with `mmlu:SUBJECT` selections folded into one MMLU task over those subjects."""
    import dataclasses
    subjects = [n.split(":", 1)[1] for n in names if n.startswith("mmlu:")]
    tasks = []
    for n in names:
        if n.startswith("mmlu:"):
            if n == next(x for x in names if x.startswith("mmlu:")) and "mmlu" not in names:
                tasks.append(dataclasses.replace(TASKS["mmlu"], subjects=tuple(subjects)))
        else:
            tasks.append(TASKS[n])
    return tasks
