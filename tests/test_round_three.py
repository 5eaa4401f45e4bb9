"""Reliability round three (issue 29), tried through the real CLI: damaged run files are refused with one line and
the documented exit code, never trained over."""
import json

from conftest import SHARED, run_cli
from test_cli_errors import assert_one_line_error


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
