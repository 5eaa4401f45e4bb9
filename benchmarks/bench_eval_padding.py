"""How much padding `tst eval`'s batches carry after sorting by length, per task, and how evenly the dealing
spreads them over ranks (issue 28).

    python benchmarks/bench_eval_padding.py --tokenizer RUN_DIR/tokenizer.json
    python benchmarks/bench_eval_padding.py --tokenizer RUN_DIR/tokenizer.json --tasks mmlu --num-fewshot 5

Builds every task's requests as `tst eval` does (the harness's prompts over the local files under ../shared/data,
every item unless --limit; the runner's scoring call is replaced by a recorder, nothing is scored), cuts them into
batches exactly as scoring does (`scoring.batches_of`: requests that share a context packed into one row, longest
first, `--batch-size` rows), and prints per task: the positions the rows hold over the positions of every request
scored alone (what sharing contexts saves), padding tokens / computed tokens (rows x width) sorted, the same in
the items' own order for comparison, and for 2 and 8 ranks the busiest rank's computed tokens over the mean
(`parallel.dealing.deal`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer

import tstcli.eval.runner as runner
from tstcli.eval.scoring import batches_of
from tstcli.eval.tasks import parse_bench
from tstcli.parallel.dealing import deal

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def padding(batches: list[list]) -> tuple[int, int]:
    """(real tokens, computed tokens) of right-padded batches."""
    real = sum(len(row) for b in batches for row in b)
    return real, sum(len(b) * max(len(row) for row in b) for b in batches)


def imbalance(batches: list[list], ranks: int) -> float:
    costs = [len(b) * len(b[0]) for b in batches]
    loads = [sum(costs[i] for i in mine) for mine in deal(costs, ranks)]
    return max(loads) / (sum(loads) / ranks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, required=True, help="a run's tokenizer.json")
    ap.add_argument("--tasks", default="paper")
    ap.add_argument("--data-dir", type=Path, default=SHARED)
    ap.add_argument("--max-len", type=int, default=2048, help="the model's context (longer inputs are cut)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--num-fewshot", type=int, default=0)
    args = ap.parse_args()
    tok = Tokenizer.from_file(str(args.tokenizer))
    requests: dict[str, list] = {}

    def record(_model, reqs, _max_len, _batch_size, desc="", share=None):
        requests[desc] = reqs
        return [0.0] * len(reqs)

    runner.loglikelihoods = record  # build the requests only: nothing is scored
    runner.evaluate(None, lambda text: tok.encode(text, add_special_tokens=False).ids, 0, args.max_len,
                    parse_bench(args.tasks), args.data_dir, args.limit, args.num_fewshot, args.batch_size)
    print("| task | requests | rows | positions, shared / alone | batches | padding, sorted | padding, item order | "
          "busiest rank / mean, 2 ranks | 8 ranks |\n|---|---|---|---|---|---|---|---|---|")
    for task, reqs in requests.items():
        batches = batches_of(reqs, args.max_len, args.batch_size)
        rows = [r for b in batches for r in b]
        in_order = sorted(rows, key=lambda r: min(i for reqs in r.branches.values() for _, i in reqs))
        unsorted = [in_order[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
        (real, computed), (_, computed_unsorted) = padding(batches), padding(unsorted)
        alone = sum(len((c + t)[-(args.max_len + 1):]) - 1 for c, t in reqs)
        row = {"task": task, "requests": len(reqs), "rows": len(rows), "shared_over_alone": real / alone,
               "batches": len(batches), "padding_sorted": 1 - real / computed,
               "padding_item_order": 1 - real / computed_unsorted,
               "imbalance_2": imbalance(batches, 2), "imbalance_8": imbalance(batches, 8)}
        print(f"| {task} | {len(reqs):,} | {len(rows):,} | {row['shared_over_alone']:.3f} | {len(batches):,} | "
              f"{row['padding_sorted']:.2%} | {row['padding_item_order']:.2%} | {row['imbalance_2']:.3f} | "
              f"{row['imbalance_8']:.3f} |")

if __name__ == "__main__":
    main()
