"""Every verb once, through the real CLI, on one device (issue #32, stage 1 of benchmarks/gpu_check.sh).

prepare; train through the switch; the same training SIGTERMed after the switch and resumed, compared with the
uninterrupted run (bitwise, or the largest difference of any tensor in the final checkpoint: CUDA kernels need not
be deterministic, and this says which); eval (held-out loss and benchmarks) on the device; export; sample from the
export on the device; last, a run of document attention and Muon (flex_attention and bf16 Newton-Schulz are
GPU-only paths). Each verb writes one JSON line to OUT/verbs.jsonl as it finishes, a failure with the tail of
its stderr (its traceback: the most valuable output of a first run on new hardware), so a stage cut short by its
time budget still leaves what it did.

    python benchmarks/gpu_verbs.py --out OUT --work /tmp/w --device cuda --dtype bf16          # the GPU machine
    python benchmarks/gpu_verbs.py --out OUT --work /tmp/w --device cpu --dtype fp32 --compile off --steps 40
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tstcli.run import checkpoint, metrics  # noqa: E402
SHARD = "shard-00001-model-00001-of-00001.safetensors"  # the one shard a single process writes


class Verbs:
    def __init__(self, a: argparse.Namespace):
        self.a, self.work = a, a.work
        self.log = a.out / "verbs.jsonl"
        self.recipe_sets = [f'data.dir="{self.work / "data"}"', f'train.dtype="{a.dtype}"',
                            f"train.compile={'true' if a.compile == 'on' else 'false'}", f"train.steps={a.steps}",
                            f'run.device="{a.device}"', "train.log_every=1", f"checkpoint.every={a.steps // 4}",
                            f"eval.every={a.steps // 4}"]
        self.failed = False

    def cli(self, name: str, *args, extra: dict | None = None, background: bool = False):
        """Run `tst ARGS` (or start it, with `background`); log one row for the verb unless it runs on."""
        cmd = [sys.executable, "-m", "tstcli", *map(str, args)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if background:  # the default SIGINT/SIGTERM disposition, as a terminal gives it
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        return self.row(name, cmd, done.returncode, time.perf_counter() - t0, done.stdout, done.stderr, extra)

    def row(self, name, cmd, rc, seconds, stdout, stderr, extra=None, expected: int = 0) -> dict:
        row = {"verb": name, "rc": rc, "seconds": round(seconds, 1), "command": " ".join(cmd[2:]), **(extra or {})}
        if rc != expected:
            self.failed = True
            row["stderr_tail"] = stderr[-4000:]
        elif stdout.strip().startswith("{"):
            row["json"] = json.loads(stdout)
        with self.log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}: rc {rc} in {seconds:.1f} s" + (f" -- {stderr.strip().splitlines()[-1]}"
                                                      if rc and stderr.strip() else ""), flush=True)
        return row

    def train(self, run: Path, stop_after: int | None = None, more: tuple = (), name: str = "train") -> dict:
        sets = [x for s in [*self.recipe_sets, *more] for x in ("--set", s)]
        args = ["train", ROOT / "recipes" / "tiny.toml", "--run-dir", run, *sets, "--json"]
        if stop_after is None:
            return self.cli(name, *args)
        t0, proc = time.perf_counter(), self.cli("train (SIGTERM)", *args, background=True)
        sent = None
        while proc.poll() is None:  # SIGTERM once a step after `stop_after` is logged
            if sent is None and (run / "metrics.jsonl").is_file() and _last_step(run) > stop_after:
                proc.send_signal(signal.SIGTERM)
                sent = _last_step(run)
            time.sleep(0.02)
        out, err = proc.communicate()
        return self.row("train (SIGTERM)", proc.args, proc.returncode, time.perf_counter() - t0, out, err,
                        {"sigterm_after_step": sent, "stopped_at": _checkpoint_steps(run)[-1:]},
                        expected=128 + signal.SIGTERM if sent is not None else 0)  # stopped with a save, or done

    def run_all(self) -> None:
        a, w = self.a, self.work
        self.cli("prepare", "prepare", ROOT / "recipes" / "tiny.toml", "--set", self.recipe_sets[0], "--json")
        full, cut = w / "runs" / "full", w / "runs" / "cut"
        self.train(full)
        switch = int(a.steps * 0.3)  # recipes/tiny.toml: tst.ratio = 0.3
        stopped = self.train(cut, stop_after=switch + 2)
        if stopped["rc"] == 128 + signal.SIGTERM and _checkpoint_steps(cut):  # stopped with a save
            self.cli("resume", "resume", cut, "--json", extra={"from_step": _checkpoint_steps(cut)[-1]})
        self.compare(full, cut)
        device = ["--device", a.device]
        self.cli("eval run", "eval", full, "--bench", "hellaswag,arc_easy", "--limit", a.limit, "--data-dir",
                 a.bench_data, *device, "--json")
        exp = w / "export"
        self.cli("export", "export", full, "--out", exp, "--dtype", "bf16" if a.dtype == "bf16" else "fp32",
                 "--json")
        self.cli("eval export", "eval", exp, "--bench", "hellaswag,arc_easy", "--limit", a.limit, "--data-dir",
                 a.bench_data, *device, "--json")
        self.cli("sample", "sample", exp, "--prompt", "Call me Ishmael.", "--max-new-tokens", 48, "--seed", 0,
                 *device, "--json")
        # paths only a GPU takes: flex_attention's block mask (document attention), Muon's bf16 Newton-Schulz
        self.train(w / "runs" / "documents-muon", name="train (documents, muon)",
                   more=('train.attention="document"', 'tst.bag_boundaries="document"', 'train.optimizer="muon"',
                         "train.muon_lr=0.005"))

    def compare(self, full: Path, cut: Path) -> None:
        """Resume against no interruption: per-step losses and the final checkpoint's tensors."""
        import torch
        from safetensors.torch import load_file
        final = f"checkpoints/step-{self.a.steps:08d}/{SHARD}"
        row = {"verb": "resume == uninterrupted"}
        if not (full / final).is_file() or not (cut / final).is_file():
            row.update(rc=1, error=f"no final checkpoint {final} in both runs")
        else:
            la, lb = _losses(full), _losses(cut)
            ta, tb = load_file(str(full / final)), load_file(str(cut / final))
            diffs = {k: (ta[k].double() - tb[k].double()).abs().max().item() for k in ta if ta[k].is_floating_point()}
            worst = max(diffs, key=diffs.get)
            row.update(rc=0, losses_equal=la == lb, steps=len(la),
                       max_loss_diff=max(abs(la[s] - lb.get(s, float("nan"))) for s in la),
                       tensors_bitwise=all(torch.equal(ta[k], tb[k]) for k in ta),
                       max_tensor_diff=diffs[worst], worst_tensor=worst)
        self.failed |= row["rc"] != 0
        with self.log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def _last_step(run: Path) -> int:
    return max((row["step"] for row in metrics.read_rows(run, "train")), default=0)


def _checkpoint_steps(run: Path) -> list[int]:
    """Steps of the run's complete checkpoints, oldest first."""
    return [int(p.name.split("-")[1]) for p in checkpoint.complete(run / "checkpoints")]


def _losses(run: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in metrics.read_rows(run, "train")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for verbs.jsonl")
    p.add_argument("--work", type=Path, required=True, help="folder for the data, runs and export (emptied first)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", default="on", choices=["on", "off"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--limit", type=int, default=100, help="items per benchmark")
    p.add_argument("--bench-data", type=Path, default=ROOT.parent / "shared" / "data")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.work, ignore_errors=True)
    verbs = Verbs(a)
    verbs.run_all()
    sys.exit(1 if verbs.failed else 0)


if __name__ == "__main__":
    main()
