"""`tst eval`: harness-exact scoring pieces, registry, aggregation, and bad input through the real CLI."""
import json

import pytest

from conftest import SHARED, run_cli, small_recipe, write_recipe
from test_cli_errors import assert_one_line_error
from tstcli.eval.runner import mean_stderr, pooled_stderr
from tstcli.eval.scoring import encode_pair
from tstcli.eval.tasks import TASKS, hellaswag_preprocess, parse_bench, winogrande


def test_encode_pair_moves_trailing_spaces_and_splits_like_the_harness():
    enc = lambda s: [ord(c) for c in s]  # noqa: E731  a character tokenizer makes the split visible
    assert encode_pair(enc, "Answer: ", "yes", 0) == (enc("Answer:"), enc(" yes"))
    assert encode_pair(enc, "", "yes", 7) == ([7], enc("yes"))


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
def run_dir(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    r = run_cli("train", write_recipe(tmp / "r.toml", small_recipe(small_data, **{"train.steps": 2})),
                "--run-dir", tmp / "run")
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def test_every_paper_task_runs_on_a_run_dir_and_an_export(run_dir, tmp_path):
    r = run_cli("eval", run_dir, "--bench", "paper", "--limit", 3, "--data-dir", SHARED, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["heldout"]["val_loss"] > 0
    assert set(out["results"]) == set(TASKS)
    assert out["results"]["mmlu"]["n"] == 3 * 57 and set(out["results"]["mmlu"]["categories"]) == {
        "humanities", "other", "social_sciences", "stem"}
    assert all(len(h) == 64 for h in out["data_files"].values())
    assert run_cli("export", run_dir, "--out", tmp_path / "hf").returncode == 0
    e = run_cli("eval", tmp_path / "hf", "--bench", "arc_easy,winogrande", "--limit", 3, "--data-dir", SHARED,
                "--json")
    assert e.returncode == 0, e.stderr
    got = json.loads(e.stdout)["results"]
    assert got["arc_easy"]["acc"] == out["results"]["arc_easy"]["acc"]
    assert got["winogrande"]["acc"] == out["results"]["winogrande"]["acc"]


def test_few_shot_mmlu_uses_the_first_k_dev_items(run_dir):
    r = run_cli("eval", run_dir, "--bench", "mmlu", "--limit", 1, "--num-fewshot", 2, "--data-dir", SHARED,
                "--json")
    assert r.returncode == 0, r.stderr
    assert_one_line_error(run_cli("eval", run_dir, "--bench", "hellaswag", "--num-fewshot", 1, "--limit", 1,
                                  "--data-dir", SHARED), 3, "hellaswag", "few-shot split")


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


def test_heldout_loss_of_an_export_on_a_given_corpus(run_dir, tmp_path):
    from conftest import MOBY
    assert run_cli("export", run_dir, "--out", tmp_path / "hf").returncode == 0
    a = run_cli("eval", tmp_path / "hf", "--corpus", MOBY, "--json")
    b = run_cli("eval", run_dir, "--corpus", MOBY, "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    la, lb = json.loads(a.stdout)["heldout"], json.loads(b.stdout)["heldout"]
    assert la["rows"] == 256 and abs(la["val_loss"] - lb["val_loss"]) < 1e-5  # export == native checkpoint
    assert_one_line_error(run_cli("eval", tmp_path / "hf", "--corpus", tmp_path / "none.txt"), 3, "none.txt")
