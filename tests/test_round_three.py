"""Reliability round three (issue 29), tried through the real CLI: damaged run files are refused with one line and
the documented exit code, never trained over."""
import json

from conftest import run_cli
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
