"""`tst eval` and the in-loop benchmarks across ranks: whole batches dealt to the ranks (balanced by tokens), the
scores gathered, and every number equal to one process's, bit for bit; rank 1 really scores its share."""
import json
import re

import pytest

from conftest import MOBY, SHARED, run_cli, small_recipe, train_small, write_recipe
from test_distributed import torchrun
from tstcli.parallel.dealing import Share, deal
from tstcli.parallel.world import World


def test_deal_gives_every_batch_once_balanced_by_tokens_and_deterministically():
    costs = [32 * w for w in (64, 60, 60, 51, 40, 33, 20, 17, 9, 3)] + [5 * 2]  # sorted batches, a short last one
    for ranks in (1, 2, 3, 4, 16):
        dealt = deal(costs, ranks)
        assert sorted(i for mine in dealt for i in mine) == list(range(len(costs)))  # each exactly once
        assert all(mine == sorted(mine) for mine in dealt)  # a rank scores its batches in the dealt order
        loads = [sum(costs[i] for i in mine) for mine in dealt]
        assert max(loads) - min(loads) <= max(costs)  # within one batch of each other
        assert deal(costs, ranks) == dealt  # every rank computes the same dealing on its own
    assert deal(costs, 2)[1], "rank 1 gets batches"
    assert deal([10, 10, 10, 10], 2) == [[0, 2], [1, 3]] and deal([1], 3) == [[0], [], []]


def test_lockstep_ranks_run_as_many_forward_passes():
    costs = [90, 80, 40, 10, 5]
    for lockstep in (False, True):
        taken = [Share(World(r, 3), lockstep=lockstep).take(costs) for r in range(3)]
        passes = [len(mine) + pads for mine, pads in taken]
        assert passes == ([3, 3, 3] if lockstep else [len(mine) for mine, _ in taken])
    assert [m for m, _ in taken] == [[0], [1], [2, 3, 4]] and [p for _, p in taken] == [2, 2, 0]


def _scored_per_rank(stderr: str, what: str) -> list[int]:
    found = re.findall(rf"(\d+) {what} scored on 2 ranks \((\d+) \+ (\d+)\)", stderr)
    assert found, stderr[-3000:]
    return [[int(x) for x in f] for f in found]


@pytest.fixture(scope="module")
def run_dir(small_data, tmp_path_factory):
    return train_small(small_data, tmp_path_factory.mktemp("ranks"), "run", **{"train.steps": 4})[1]


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--bench", "hellaswag,arc_easy", "--limit", 12, "--batch-size", 5],  # + the run's held-out rows
    ["--bench", "mmlu:anatomy", "--num-fewshot", 5, "--limit", 9, "--batch-size", 2],
    ["--corpus", MOBY, "--batch-size", 7],
], ids=["heldout-hellaswag-arc", "mmlu-5-shot", "corpus"])
def test_two_processes_give_one_process_json_and_samples_bitwise(run_dir, tmp_path, args):
    one = run_cli("eval", run_dir, *args, "--data-dir", SHARED, "--json", "--samples", tmp_path / "one.jsonl")
    assert one.returncode == 0, one.stderr
    two = torchrun(2, "eval", run_dir, *args, "--data-dir", SHARED, "--json", "--samples", tmp_path / "two.jsonl")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout == one.stdout and two.stdout.count("\n") == 1, "rank 0 alone prints, every number equal"
    assert two.stderr.count("eval: ") == 2, "rank 1 logs nothing: rank 0's model line and its scored line"
    if "--bench" in args:
        assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    else:
        assert not (tmp_path / "one.jsonl").exists() and not (tmp_path / "two.jsonl").exists()
    [(total, first, second)] = _scored_per_rank(two.stderr, "items")
    assert first > 0 and second > 0 and first + second == total
    out = json.loads(two.stdout)
    assert out["heldout"]["val_loss"] > 0 and all(r["n"] > 0 for r in out["results"].values())


@pytest.mark.slow
@pytest.mark.parametrize("sets", [
    ['distributed.strategy="ddp"'],
    ['distributed.strategy="fsdp"'],
    # FSDP2 gathers bf16 weights for training's forward; the benchmarks still score the fp32 weights, as tst eval
    ['distributed.strategy="fsdp"', 'train.dtype="bf16"', 'distributed.activation_checkpointing="selective"'],
], ids=["ddp", "fsdp", "fsdp-bf16-checkpointed"])
def test_in_loop_benchmarks_on_every_rank_equal_tst_eval_of_the_checkpoint(small_data, tmp_path, sets):
    recipe = write_recipe(tmp_path / "r.toml", small_recipe(small_data, **{"train.steps": 6}))
    run = tmp_path / "run"
    r = torchrun(2, "train", recipe, "--run-dir", run, *[a for s in sets for a in ("--set", s)],
                 "--set", 'eval.bench=["arc_easy", "hellaswag"]', "--set", "eval.bench_limit=20",
                 "--set", "eval.bench_every=3", "--set", f'eval.bench_data_dir="{SHARED}"',
                 "--set", "checkpoint.every=3")
    assert r.returncode == 0, r.stderr[-3000:]
    per_rank = _scored_per_rank(r.stderr, "requests")
    assert len(per_rank) == 2 and all(second > 0 for _, _, second in per_rank), "rank 1 scored its share"
    bench = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bench = [b for b in bench if b["kind"] == "bench"]
    assert sorted({b["step"] for b in bench}) == [3, 6]
    for step in (3, 6):
        out = run_cli("eval", run, "--step", step, "--bench", "arc_easy,hellaswag", "--limit", 20,
                      "--data-dir", SHARED, "--json")
        assert out.returncode == 0, out.stderr
        ref = json.loads(out.stdout)["results"]
        got = {b["task"]: b for b in bench if b["step"] == step}
        assert {t: (g["n"], g["acc"], g["acc_norm"]) for t, g in got.items()} == \
            {t: (x["n"], x["acc"], x["acc_norm"]) for t, x in ref.items()}
