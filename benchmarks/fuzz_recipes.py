"""Fuzz `tst train RECIPE --dry-run` recipe loading with many generated recipes (issue #6).

    python benchmarks/fuzz_recipes.py --examples 2000

Uses the property of tests/fuzz_recipes.py (exit 0, or exit 2 with one line naming the file and key; never a
traceback) and prints how many examples ran and how they ended.
"""
import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fuzz_recipes import check_recipe, recipe_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    outcomes = collections.Counter()

    @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=False)
    @given(recipe_bytes())
    def prop(content):
        with tempfile.TemporaryDirectory() as tmp:
            outcomes[check_recipe(Path(tmp), content)] += 1

    t0 = time.time()
    from hypothesis import seed
    seed(args.seed)(prop)()
    total = sum(outcomes.values())
    print(f"{total} examples in {time.time() - t0:.0f} s: exit codes {dict(sorted(outcomes.items()))}; "
          "no traceback, no other exit code")


if __name__ == "__main__":
    main()
