"""`tst eval`: harness-exact scoring pieces, registry, aggregation, and bad input through the real CLI."""
import csv
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import SHARED, run_cli
from test_cli_errors import assert_one_line_error
from tstcli.eval.runner import mean_stderr, pooled_stderr
from tstcli.eval.scoring import encode_pairs
from tstcli.eval.tasks import TASKS, hellaswag_preprocess, parse_bench, winogrande


def test_encode_pairs_moves_trailing_spaces_and_splits_like_the_harness():
    enc = lambda s: [ord(c) for c in s]  # noqa: E731  a character tokenizer makes the split visible
    calls = []
    many = lambda texts: calls.append(texts) or [enc(t) for t in texts]  # noqa: E731
    pairs = [("Answer: ", "yes"), ("", "yes"), ("Answer: ", "no")]
    assert encode_pairs(many, pairs, 7) == [(enc("Answer:"), enc(" yes")), ([7], enc("yes")),
                                            (enc("Answer:"), enc(" no"))]
    assert calls == [["Answer:", "Answer: yes", "yes", "Answer: no"]], "each distinct text once, in one call"


def test_bench_names_and_aliases():
    assert parse_bench("arc") == ["arc_easy", "arc_challenge"]
    assert len(parse_bench("paper")) == 8 and parse_bench("mmlu,arc_easy,mmlu") == ["mmlu", "arc_easy"]
    assert set(TASKS) == {"hellaswag", "arc_easy", "arc_challenge", "mmlu", "boolq", "openbookqa", "piqa",
                          "winogrande"}


def test_prompts_follow_the_harness():
    assert hellaswag_preprocess("Roof shingle removal: A man [title] is  sitting [step] up") == \
        "Roof shingle removal: A man. is sitting up"
    d = winogrande({"sentence": "The trophy does not fit in the case because the _ is too big.",
                    "option1": "trophy", "option2": "case", "answer": "1"})
    assert d.context == ["The trophy does not fit in the case because the trophy",
                         "The trophy does not fit in the case because the case"]
    assert d.choices == ["is too big."] and d.gold == 0
    boolq = TASKS["boolq"].to_doc({"question": "is it", "passage": "P", "answer": False})
    assert boolq.context == "P\nQuestion: is it?\nAnswer:" and boolq.gold == 0
    mmlu = TASKS["mmlu"].to_doc({"question": " Q ", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": "x"})
    assert mmlu.context == "Q\nA. a\nB. b\nC. c\nD. d\nAnswer:" and mmlu.choices == ["A", "B", "C", "D"]
    assert TASKS["mmlu"].description("high_school_physics") == \
        "The following are multiple choice questions (with answers) about high school physics.\n\n"


def test_stderr_formulas():
    assert mean_stderr([1, 0, 1, 0]) == pytest.approx((1 / 3) ** 0.5 / 2)
    # pooling equal groups of a constant metric gives the pooled sample stderr of the union
    assert pooled_stderr([0.1, 0.1], [10, 10]) == pytest.approx((9 * 0.01 * 10 * 2 / 18 / 20) ** 0.5)


@pytest.fixture(scope="module")
def run_dir(finished_run):
    return finished_run  # only read by `tst eval`


@pytest.mark.slow
def test_every_paper_task_runs_on_a_run_dir_and_an_export(run_dir, finished_export, tmp_path):
    r = run_cli("eval", run_dir, "--bench", "paper", "--limit", 3, "--data-dir", SHARED, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["heldout"]["val_loss"] > 0
    assert set(out["results"]) == set(TASKS)
    assert out["results"]["mmlu"]["n"] == 3 * 57 and set(out["results"]["mmlu"]["categories"]) == {
        "humanities", "other", "social_sciences", "stem"}
    assert all(len(h) == 64 for h in out["data_files"].values())
    e = run_cli("eval", finished_export, "--bench", "arc_easy,winogrande", "--limit", 3, "--data-dir", SHARED,
                "--json")
    assert e.returncode == 0, e.stderr
    got = json.loads(e.stdout)["results"]
    assert got["arc_easy"]["acc"] == out["results"]["arc_easy"]["acc"]
    assert got["winogrande"]["acc"] == out["results"]["winogrande"]["acc"]


@pytest.mark.slow
def test_few_shot_mmlu_uses_the_first_k_dev_items(run_dir):
    r = run_cli("eval", run_dir, "--bench", "mmlu", "--limit", 1, "--num-fewshot", 2, "--data-dir", SHARED,
                "--json")
    assert r.returncode == 0, r.stderr
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "openbookqa", "--num-fewshot", 1, "--limit", 1,
                                  "--data-dir", SHARED), 3, "openbookqa", "few-shot split")


@pytest.mark.slow
def test_eval_bad_input(run_dir, tmp_path):
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "nosuch"), 2, "nosuch", "unknown benchmark")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("eval", empty), 4, "no config.json")
    bare = tmp_path / "bare"
    for f in ("run.json", "recipe.toml", "manifest.json", "tokenizer.json"):
        (bare / f).parent.mkdir(exist_ok=True)
        (bare / f).write_bytes((run_dir / f).read_bytes())
    assert_one_line_error(run_cli("eval", bare), 4, "no complete checkpoint")
    data = tmp_path / "data" / "arc"
    data.mkdir(parents=True)
    (data / "ARC-Easy-Test.jsonl").write_text('{"question": broken\n')
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "arc_easy", "--data-dir", tmp_path / "data"), 3,
                          "ARC-Easy-Test.jsonl")
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "piqa", "--data-dir", tmp_path / "data"), 3,
                          "piqa_validation.jsonl", "not found")


def test_mmlu_subject_selection():
    from tstcli.eval.tasks import resolve
    names = parse_bench("mmlu:anatomy,arc_easy,mmlu:virology")
    tasks = resolve(names)
    assert [t.name for t in tasks] == ["mmlu", "arc_easy"] and tasks[0].subjects == ("anatomy", "virology")
    with pytest.raises(Exception, match="unknown MMLU subject"):
        parse_bench("mmlu:cooking")


@pytest.mark.slow
def test_heldout_loss_of_an_export_on_a_given_corpus(run_dir, finished_export, tmp_path):
    from conftest import MOBY
    a = run_cli("eval", finished_export, "--corpus", MOBY, "--json")
    b = run_cli("eval", run_dir, "--corpus", MOBY, "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    la, lb = json.loads(a.stdout)["heldout"], json.loads(b.stdout)["heldout"]
    assert la["rows"] == 256 and abs(la["val_loss"] - lb["val_loss"]) < 1e-5  # export == native checkpoint
    assert_one_line_error(run_cli("eval", finished_export, "--corpus", tmp_path / "none.txt"), 3, "none.txt")


# ---- benchmark data from the Hugging Face hub: a cache laid out as huggingface-hub writes it, used offline ----

def _fake_hub(home, repo: str, files: dict) -> Path:
    """Put parquet files into an HF cache under `home` (refs/main -> snapshots/<commit>/...), as a download would."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = home / "hub" / ("datasets--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for name, rows in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    return folder


def _jsonl(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _hellaswag_hub_row(d):  # the hub's HellaSwag stores the label as a string
    return {**d, "label": str(d["label"])}


def _arc_hub_rows(path):  # the hub's ai2_arc: question is the stem, choices are {text: [...], label: [...]}
    return [{"id": d["id"], "question": d["question"]["stem"], "answerKey": d["answerKey"],
             "choices": {"text": [c["text"] for c in d["question"]["choices"]],
                         "label": [c["label"] for c in d["question"]["choices"]]}} for d in _jsonl(path)]


def _mmlu_hub_rows(path, subject):  # cais/mmlu: choices as a list, answer as an index
    with open(path, encoding="utf-8", newline="") as fh:
        return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for r in csv.reader(fh) if r]


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    """The harness's datasets (Rowan/hellaswag, allenai/ai2_arc, cais/mmlu) in their hub schema, built from the
    shared data; HellaSwag's train split is stood in for by validation items 100-139 (not in ../shared/data)."""
    home = tmp_path_factory.mktemp("hf-home")
    val = _jsonl(SHARED / "hellaswag" / "hellaswag_val.jsonl.gz")
    _fake_hub(home, "Rowan/hellaswag", {
        "data/validation-00000-of-00001.parquet": [_hellaswag_hub_row(d) for d in val[:20]],
        "data/train-00000-of-00001.parquet": [_hellaswag_hub_row(d) for d in val[100:140]]})
    _fake_hub(home, "allenai/ai2_arc", {
        f"{c}/{split}-00000-of-00001.parquet": _arc_hub_rows(SHARED / "arc" / f"{c}-{f}.jsonl")
        for c in ("ARC-Easy", "ARC-Challenge") for split, f in (("test", "Test"), ("train", "Train"))})
    _fake_hub(home, "cais/mmlu", {
        f"anatomy/{split}-00000-of-00001.parquet": _mmlu_hub_rows(SHARED / "mmlu" / split / f"anatomy_{split}.csv",
                                                                  "anatomy") for split in ("test", "dev")})
    return home


def _eval_samples(run_dir, tmp_path, data_dir, env, *args):
    out = tmp_path / f"samples-{len(list(tmp_path.iterdir()))}.jsonl"
    r = run_cli("eval", run_dir, "--data-dir", data_dir, "--samples", out, "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_benchmarks_missing_locally_come_from_the_hub_and_score_identically(run_dir, hub_home, tmp_path):
    """Offline with a populated hub cache and an empty --data-dir, every hub task reads the harness's parquet files
    and gives the same per-choice log-likelihoods as the local files. 15 items, so that ARC-Easy's include both
    label formats (letters, and digits at item 14)."""
    env = {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}
    empty = tmp_path / "no-local-data"
    empty.mkdir()
    args = ["--bench", "hellaswag,arc_easy,arc_challenge,mmlu:anatomy", "--limit", "15"]
    hub_out, hub_rows = _eval_samples(run_dir, tmp_path, empty, env, *args)
    local_out, local_rows = _eval_samples(run_dir, tmp_path, SHARED, env, *args)
    assert hub_rows == local_rows and hub_out["results"] == local_out["results"]
    assert len(hub_rows) == 15 * 4
    assert all(str(hub_home) in f for f in hub_out["data_files"]), hub_out["data_files"]
    assert not any(str(hub_home) in f for f in local_out["data_files"])
    arc_labels = {c["label"] for d in _jsonl(SHARED / "arc" / "ARC-Easy-Test.jsonl")[:15]
                  for c in d["question"]["choices"]}
    assert "A" in arc_labels and "1" in arc_labels, arc_labels


@pytest.mark.slow
def test_hellaswag_few_shot_draws_from_the_hub_train_split(run_dir, hub_home, tmp_path):
    """HellaSwag's shots come from its train split: from the hub (string labels) they equal the same items in a
    local hellaswag_train.jsonl (int labels, rowanz's format)."""
    env = {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}
    local = tmp_path / "local"
    (local / "hellaswag").mkdir(parents=True)
    shutil.copy(SHARED / "hellaswag" / "hellaswag_val.jsonl.gz", local / "hellaswag")
    train = _jsonl(SHARED / "hellaswag" / "hellaswag_val.jsonl.gz")[100:140]
    (local / "hellaswag" / "hellaswag_train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in train))
    args = ["--bench", "hellaswag", "--limit", "6", "--num-fewshot", "2"]
    hub_out, hub_rows = _eval_samples(run_dir, tmp_path, SHARED, env, *args)
    local_out, local_rows = _eval_samples(run_dir, tmp_path, local, env, *args)
    zero_out, zero_rows = _eval_samples(run_dir, tmp_path, SHARED, env, "--bench", "hellaswag", "--limit", "6")
    assert hub_rows == local_rows
    assert [r["loglikelihoods"] for r in hub_rows] != [r["loglikelihoods"] for r in zero_rows]  # shots were used
    assert any("train-00000-of-00001.parquet" in f for f in hub_out["data_files"])


@pytest.mark.slow
def test_hub_data_offline_and_uncached_or_corrupt_is_one_line(run_dir, hub_home, tmp_path):
    empty = tmp_path / "no-local-data"
    empty.mkdir()
    offline = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1"}
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "arc_easy", "--data-dir", empty, env=offline), 3,
                          "ARC-Easy-Test.jsonl not found", "hf://datasets/allenai/ai2_arc/", "offline")
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "hellaswag", "--num-fewshot", "1", "--limit", "1",
                                  "--data-dir", SHARED, env=offline), 3, "hellaswag_train.jsonl not found",
                          "offline")
    broken = tmp_path / "broken-hf"
    shutil.copytree(hub_home, broken, symlinks=True)
    target = next((broken / "hub").glob("datasets--cais--mmlu/snapshots/*/anatomy/test-*.parquet"))
    target.write_bytes(b"PAR1 not really")
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "mmlu:anatomy", "--data-dir", empty,
                                  env={"HF_HOME": str(broken), "HF_HUB_OFFLINE": "1"}), 3,
                          "test-00000-of-00001.parquet", "not a readable parquet file")


def test_hub_data_without_pyarrow_names_the_extra(run_dir, hub_home, tmp_path):
    blocker = tmp_path / "no-pyarrow" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pyarrow is blocked for this test')\n")
    empty = tmp_path / "no-local-data"
    empty.mkdir()
    env = {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "arc_easy", "--data-dir", empty, env=env), 2,
                          "pyarrow", "tst[eval]")


def test_an_unwritable_samples_file_is_refused_before_scoring(finished_export, tmp_path):
    """`--samples results/x.jsonl` without `results/` failed after the whole evaluation, no scores printed."""
    missing = tmp_path / "results" / "x.jsonl"
    r = run_cli("eval", finished_export, "--bench", "arc_easy", "--limit", "2", "--samples", missing,
                "--data-dir", SHARED)
    assert_one_line_error(r, 2, "--samples", str(missing), "does not exist")
    assert r.stdout == "" and "arc_easy" not in r.stderr  # refused before any scoring
    assert_one_line_error(run_cli("eval", finished_export, "--bench", "arc_easy", "--samples", tmp_path), 2,
                          "--samples", "is a directory")
