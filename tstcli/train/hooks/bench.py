"""In-loop benchmarks: `eval.bench` tasks scored with `tst eval`'s own code every `eval.bench_every` steps and at
the end, written as `kind = "bench"` rows (`step`, `task`, `n`, `acc`, `acc_norm` where the task has it). The same
items of the same weights give the same numbers as `tst eval RUN --step N --bench ... --limit K`. Every rank scores
the batches dealt to it (`parallel/dealing.py`, as `tst eval` under torchrun) with the training model itself; under
FSDP2 with its shards, one block gathered at a time, every rank running as many forward passes. Rank 0 writes the
rows. The benchmark files are checked before the first step (missing: one line, exit 3)."""
from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer

from tstcli.errors import UsageError
from tstcli.eval.runner import DEFAULT_BATCH_SIZE, check_available, evaluate
from tstcli.eval.tasks import parse_bench
from tstcli.parallel.dealing import Share
from tstcli.parallel.world import host_group
from tstcli.run import rundir
from tstcli.run.load import encode_many
from tstcli.train.hooks import Hook


class Benchmarks(Hook):
    priority = 70  # after the held-out evaluation, before the checkpoint of the step

    def __init__(self, bench: list[str], limit: int, every: int, last_step: int, data_dir: Path):
        try:
            self.names = parse_bench(",".join(bench))
        except UsageError as e:
            raise UsageError(f"eval.bench: {e.message.removeprefix('--bench ')}") from None
        self.limit, self.every, self.last_step, self.data_dir = limit or None, every, last_step, data_dir
        self.share: Share | None = None

    def should_bench(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step

    def preflight(self, world) -> None:
        check_available(self.names, self.data_dir)  # every rank reads them (a first run may download them)

    def on_start(self, t) -> None:
        self.tokenizer = Tokenizer.from_file(str(t.run_dir / rundir.TOKENIZER))
        if t.world.distributed:  # the gathers on a gloo group of their own, created by every rank here
            self.share = Share(t.world, host_group(t.r.distributed.timeout_s), lockstep=t.engine.fsdp)

    def after_step(self, t, step: int) -> None:
        if self.should_bench(step):
            self.bench(t, step)

    def bench(self, t, step: int) -> None:
        t.flush()  # scoring waits for the device: the queued steps' wait is theirs, read before it
        before = list(self.share.scored) if self.share else []
        encode = functools.partial(encode_many, self.tokenizer)
        results, _, _ = evaluate(t.engine.scoring_model(), encode, t.data.manifest["tokenizer"]["eot_id"],
                                 t.r.model.max_seq_len, self.names, self.data_dir, self.limit, 0, DEFAULT_BATCH_SIZE,
                                 self.share)
        if not t.world.main:
            return
        for task, res in results.items():
            row = {"kind": "bench", "step": step, "task": task, "n": res["n"], "acc": res["acc"]}
            if "acc_norm" in res:
                row["acc_norm"] = res["acc_norm"]
            t.emit(row)
        if self.share:  # who scored what: each rank's requests, as the gathers received them
            counts = [now - was for now, was in zip(self.share.scored, before)]
            t.say(f"step {step} bench: {sum(counts)} requests scored on {len(counts)} ranks "
                  f"({' + '.join(map(str, counts))})")
