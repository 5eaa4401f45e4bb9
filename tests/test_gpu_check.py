"""benchmarks/gpu_check.sh, the one prepared script for a lent GPU (issue #32), runs every stage on the CPU: a
first try on the GPU must not be spent on the script's own bugs."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": "900", "GPU_CHECK_WORK": str(tmp_path / "w")}
    done = subprocess.run(["bash", ROOT / "benchmarks" / "gpu_check.sh", out, "--cpu"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verbs = [json.loads(line) for line in (out / "verbs.jsonl").read_text().splitlines()]
    names = [v["verb"] for v in verbs]
    assert names == ["prepare", "train", "train (SIGTERM)", "resume", "resume == uninterrupted", "eval run",
                     "export", "eval export", "sample", "train (documents, muon)"]
    by = {v["verb"]: v for v in verbs}
    assert by["train (SIGTERM)"]["rc"] == 143 and by["train (SIGTERM)"]["stopped_at"], "stopped with a save"
    same = by["resume == uninterrupted"]
    assert same["losses_equal"] and same["tensors_bitwise"], same  # on the CPU resume is exact
    assert by["eval run"]["json"]["results"] == by["eval export"]["json"]["results"]
    assert by["sample"]["json"]["device"] == "cpu"
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert [(x["shape"], x["precision"]) for x in bench["results"]] == [("270m", "bf16")]
    assert all("phases" in x for x in bench["results"]), bench["results"]
    assert bench["results"][0]["checkpoint"]["sync_s"] > 0
    rows = [json.loads(line) for line in (out / "bench_eval.log").read_text().splitlines() if line.startswith("{")]
    assert [r["task"] for r in rows] == ["hellaswag", "arc_easy"]
    assert all(r["predictions_identical"] and r["device"] == "cpu" for r in rows), rows
    assert "stages: verbs rc 0, bench_gpu rc 0, bench_eval rc 0" in (out / "machine.txt").read_text()
