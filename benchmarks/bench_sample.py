"""Generation speed: `tst sample`'s native KV-cache loop against transformers' `generate` on the same export, same
CPU, side by side (issue #18's target: >= 1.0x).

Trains a few steps of the default recipe (optionally reshaped with --set), exports it, then times greedy generation
of --tokens new tokens from the same prompt with both, alternating rounds so that machine noise hits both alike;
end-of-text is ignored (both generate exactly --tokens tokens). Reports median tokens/s and the ratio.

    python benchmarks/bench_sample.py                                   # the tiny recipe's shape
    python benchmarks/bench_sample.py --set model.dim=512 --set model.n_layers=8 --set model.n_heads=8
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tstcli.run.load import load_model  # noqa: E402
from tstcli.sample.generate import Sampling, generate  # noqa: E402

PROMPT = "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse,"


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "tstcli", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-2000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="recipe override for the model trained (repeatable)")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        sets = [x for s in a.set for x in ("--set", s)]
        _cli("train", ROOT / "recipes" / "tiny.toml", "--run-dir", f"{tmp}/run", "--set", "train.steps=10",
             "--set", "train.compile=false", "--set", "checkpoint.every=10", "--set", f'data.dir="{tmp}/data"', *sets)
        _cli("export", f"{tmp}/run", "--out", f"{tmp}/export")
        lm = load_model(Path(f"{tmp}/export"))
        hf = AutoModelForCausalLM.from_pretrained(f"{tmp}/export", dtype=torch.float32).eval()
    ids = lm.encode(PROMPT)
    greedy = Sampling(max_new_tokens=a.tokens, temperature=0.0)
    times = {"tst": [], "transformers": []}
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        ours = generate(lm.model, ids, greedy, torch.Generator(), None)
        times["tst"].append(time.perf_counter() - t0)
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.no_grad():
            theirs = hf.generate(x, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=lm.eot_id)
        times["transformers"].append(time.perf_counter() - t0)
    same = ours.token_ids == theirs[0, len(ids):].tolist()
    rate = {k: a.tokens / statistics.median(v) for k, v in times.items()}
    result = {"command": " ".join(sys.argv), "params": sum(p.numel() for p in lm.model.parameters()),
              "prompt_tokens": len(ids), "new_tokens": a.tokens, "tokens_per_s": rate,
              "ratio_tst_over_transformers": rate["tst"] / rate["transformers"], "same_tokens": same,
              "torch": torch.__version__, "threads": a.threads}
    print(f"{result['params']:,} parameters, {len(ids)} prompt tokens, {a.tokens} new tokens (greedy): tst "
          f"{rate['tst']:.1f} tokens/s, transformers {rate['transformers']:.1f} tokens/s, ratio "
          f"{result['ratio_tst_over_transformers']:.2f}; identical tokens: {same}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
