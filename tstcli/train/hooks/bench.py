"""In-loop benchmarks: `eval.bench` tasks scored with `tst eval`'s own code every `eval.bench_every` steps and at
the end, written as `kind = "bench"` rows (`step`, `task`, `n`, `acc`, `acc_norm` where the task has it). The same
items of the same weights give the same numbers as `tst eval RUN --step N --bench ... --limit K`. Rank 0 scores;
under FSDP2 the full weights are gathered first (a collective), under DDP and in one process the training model
itself is scored. The benchmark files are checked before the first step (missing: one line, exit 3)."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from tstcli.errors import UsageError
from tstcli.eval.runner import DEFAULT_BATCH_SIZE, check_available, evaluate
from tstcli.eval.tasks import parse_bench
from tstcli.model import Llama
from tstcli.parallel.world import barrier
from tstcli.run import rundir
from tstcli.train.hooks import Hook


class Benchmarks(Hook):
    priority = 70  # after the held-out evaluation, before the checkpoint of the step

    def __init__(self, bench: list[str], limit: int, every: int, last_step: int, data_dir: Path):
        try:
            self.names = parse_bench(",".join(bench))
        except UsageError as e:
            raise UsageError(f"eval.bench: {e.message.removeprefix('--bench ')}") from None
        self.limit, self.every, self.last_step, self.data_dir = limit or None, every, last_step, data_dir

    def should_bench(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step

    def preflight(self, world) -> None:
        if world.main:  # rank 0 scores; it may download the files from the hub once, into its cache
            check_available(self.names, self.data_dir)

    def on_start(self, t) -> None:
        if t.world.main:  # only rank 0 scores
            self.tokenizer = Tokenizer.from_file(str(t.run_dir / rundir.TOKENIZER))

    def after_step(self, t, step: int) -> None:
        if self.should_bench(step):
            self.bench(t, step)

    def bench(self, t, step: int) -> None:
        t.flush()  # scoring waits for the device: the queued steps' wait is theirs, read before it
        model = self._scorable_model(t)
        if t.world.main:
            encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
            results, _, _ = evaluate(model, encode, t.data.manifest["tokenizer"]["eot_id"], t.r.model.max_seq_len,
                                     self.names, self.data_dir, self.limit, 0, DEFAULT_BATCH_SIZE)
            for task, res in results.items():
                row = {"kind": "bench", "step": step, "task": task, "n": res["n"], "acc": res["acc"]}
                if "acc_norm" in res:
                    row["acc_norm"] = res["acc_norm"]
                t.emit(row)
        barrier()

    @staticmethod
    def _scorable_model(t):
        """The model to score on rank 0: the training model itself, or under FSDP2 a plain copy of the gathered
        full weights (every rank takes part in the gather)."""
        if not t.engine.fsdp:
            return t.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(t.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not t.world.main:
            return None
        plain = Llama(t.r.model, t.model.vocab_size)
        plain.load_state_dict(full)
        return plain.to(t.device)
