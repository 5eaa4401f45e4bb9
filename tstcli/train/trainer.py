"""The training loop: the step math and a short loop; every side job is a hook (`tstcli.train.hooks`), the stop
is the stop controller's (`train/stopping.py`) and a non-finite step's fate the divergence policy's. A step asks
the phase plan which phase it is in, reads that phase's rows (their width checked against the plan) and runs the
objective forward and backward over the micro-batches; phase 2 is the same code with bags of one token. Model,
optimizer state and the LR schedule carry straight through the switch unless an ablation hook changes them."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import torch

from tstcli.data.opener import TrainData
from tstcli.errors import Stopped
from tstcli.model import Llama
from tstcli.objective import Documents, HeldOut, Objective, heldout_loss
from tstcli.parallel.engine import Engine
from tstcli.parallel.world import World, full_value, mean_stats_across
from tstcli.recipe import Recipe
from tstcli.run import checkpoint, rundir
from tstcli.schedule import Schedule
from tstcli.train import float8
from tstcli.train.batch import to_device
from tstcli.train.divergence import DivergencePolicy
from tstcli.train.hooks import Hook, Hooks
from tstcli.train.optim import apply_update, make_optimizer, set_lr
from tstcli.train.state import TrainState
from tstcli.train.steplog import StepLog, StepResult, row_of
from tstcli.train.stopping import StopController
from tstcli.tst import loss_specs


class Trainer:
    """One rank's training loop. Under torchrun every rank runs it in lock-step; the hooks decide who writes."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: TrainData, world: World, device: torch.device,
                 hooks: list[Hook] = ()):
        r = self.r = recipe
        plan = self.plan = recipe.plan
        self.run_dir, self.data, self.world, self.device = Path(run_dir), data, world, device
        self.micro = r.train.rows_per_micro_batch(world.size)
        self.amp = torch.bfloat16 if r.train.dtype == "bf16" else None
        self.model = Llama(r.model, data.manifest["vocab_size"])
        self.model.init_weights(torch.Generator().manual_seed(r.run.seed))  # the same on every rank
        self.model.to(device)
        if r.train.float8:  # before compile and FSDP wrap the blocks (checked at start: float8.check)
            float8.convert(self.model)
        documents = Documents.of(r, data.manifest["tokenizer"]["eot_id"])
        self.engine = Engine(Objective(self.model, plan.specs, loss_specs(plan, r.tst, r.train.loss_chunk_size),
                                       self.amp, documents), r.distributed, world, self.amp, r.train.compile)
        self.optimizer = make_optimizer(self.model, r.train)
        self.schedule = Schedule.of(r)
        self.loaders = data.loaders(plan, r.run.seed)
        self.val_rows = torch.from_numpy(data.heldout_batch(r))
        self.flops_per_position = self.model.flops_per_position(r.train.seq_len)
        self.state = TrainState()
        self.resumed_from: Path | None = None  # the checkpoint this process continued from
        self._clock = time.perf_counter()  # wall time counts from here, minus the run's earlier elapsed time
        self.hooks = Hooks(hooks)
        self.stop = StopController(world, r.distributed.timeout_s)
        self.divergence = DivergencePolicy(r.train.skip_nonfinite_steps, self.run_dir)
        self.log = StepLog()  # rows of steps whose scalars are still on the device

    @property
    def stopping(self) -> bool:  # the ranks agreed to stop: every rank saves and stops after this step
        return self.stop.agreed

    # ---- the step math ----
    def _accumulate(self, phase: int, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward and backward over the micro-batches of this rank's rows (gradients communicated on the last).
        Returns the mean CE and the mean of the model's own metrics."""
        n_micro = len(rows) // self.micro
        step_fn = self.engine.step_fn(phase)
        ce = torch.zeros((), device=self.device)
        metrics: dict = {}
        for i in range(n_micro):
            with self.engine.gradient_sync(i == n_micro - 1):
                loss, stats = step_fn(rows[i * self.micro:(i + 1) * self.micro])
                (loss / n_micro).backward()
            ce += stats.pop("ce")
            for name, v in stats.items():
                metrics[name] = metrics[name] + v if name in metrics else v
        return ce / n_micro, {name: v / n_micro for name, v in metrics.items()}

    def train_step(self, step: int) -> StepResult:
        """One optimizer step, queued on the device without waiting for it: the update is applied only if the loss
        and gradient norm are finite (decided on the device); `flush` reads the outcome."""
        r, phase = self.r, self.plan.phase_at(step)
        t0 = time.perf_counter()
        rows_np, epoch = self.loaders[phase].batch(self.plan.step_in_phase(step), self.world.rank, self.world.size)
        self.plan.check_rows(phase, rows_np.shape)
        rows = to_device(rows_np, self.device)
        data_s = time.perf_counter() - t0
        loss, metrics = mean_stats_across(*self._accumulate(phase, rows))
        self.hooks.after_backward(self, step)
        clip = r.train.grad_clip if r.train.grad_clip > 0 else float("inf")
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
        factor = self.schedule.factor(step)
        set_lr(self.optimizer, factor)
        apply_update(self.optimizer, ok)
        self.stop.vote()
        return StepResult(phase, epoch, data_s, r.train.lr * factor, loss, grad_norm, metrics, ok)

    @torch.no_grad()
    def heldout(self) -> HeldOut:
        """Ordinary next-token loss on the fixed held-out rows (eager: a few batches, not worth a compile).
        Under FSDP2 every rank scores the same rows (the sharded forward needs all of them). The queued steps are
        read first: the evaluation waits for the device, and that wait is theirs (their step time, their MFU)."""
        self.flush()
        objective = self.engine.objective
        return heldout_loss(lambda part: objective(part, 2)[1]["ce"], self.val_rows.to(self.device), self.micro)

    # ---- rows, messages, state ----
    def emit(self, row: dict) -> None:  # after the rows of every earlier step, read from the device first
        self.flush()
        self.hooks.on_row(self, row)

    def say(self, text: str) -> None:
        self.flush()
        self.hooks.on_message(self, text)

    def elapsed(self) -> float:
        return time.perf_counter() - self._clock

    def checkpoint_state(self) -> dict:
        return self.state.to_checkpoint(self.elapsed(), self.plan.phase_at(max(self.state.step, 1)))

    # ---- what hooks may change ----
    def reset_optimizer(self) -> None:
        """A fresh optimizer (the `tst.reset_optimizer` ablation at the switch)."""
        self.optimizer = make_optimizer(self.model, self.r.train)

    def record_val(self, val_loss: float) -> None: self.state.val_loss = val_loss  # noqa: E704

    def _restore(self, ckpt: Path) -> list[str]:
        self.state, world = TrainState.from_checkpoint(checkpoint.load(ckpt, self.model, self.optimizer.parts))
        if world == self.world.size:
            return []
        return [f"resume: checkpoint written by {world} process(es), continuing on {self.world.size}: state "
                "resharded; the global batch and its rows are unchanged"]

    def record(self, step: int, out: StepResult, dt: float) -> None:
        """Count the step into the state and queue its row until the next `flush`."""
        s, phase, B = self.state, out.phase, self.plan.batch_size
        positions = B * self.plan.seq_len
        s.count(phase, B * self.plan.row_widths[phase], positions, self.flops_per_position * positions,
                self.data.mix_tokens(self.loaders, phase, self.plan.step_in_phase(step)))
        self.log.add(step, out, {"tokens": s.tokens, "positions": s.positions, "flops": s.flops,
                                 "elapsed_s": self.elapsed(), "dt": dt, "mix_tokens": dict(s.mix_tokens)})

    def flush(self) -> None:
        """Read the queued steps from the device and emit their rows in order (a non-finite step goes to the
        divergence policy: a skip row, or the run stops with the rows before it written)."""
        for read in self.log.read():
            if not read.ok:
                self.state.skipped = self.divergence.skipped_after(read, self.state.skipped)
            row = row_of(read, self.r.tst.loss, self.state.skipped)
            if row["kind"] == "train":
                self.hooks.complete_row(self, row)
            self.hooks.on_row(self, row)

    # ---- the loop ----
    def run(self, resume: Path | None = None) -> dict:
        """Train from the start, or from checkpoint `resume`, to the plan's last step; returns the summary."""
        notes = self._restore(resume) if resume is not None else []
        self.resumed_from = resume
        self._clock = time.perf_counter() - self.state.elapsed_s
        try:
            self.hooks.on_start(self)
            for note in notes:
                self.say(note)
            last = self.plan.last_step
            for step in range(self.state.step + 1, last + 1):
                self.hooks.before_step(self, step)
                t0 = time.perf_counter()
                out = self.train_step(step)
                self.record(step, out, time.perf_counter() - t0)
                self.state.step = step
                if step % self.r.train.log_every == 0 or step == last:
                    self.flush()
                self.hooks.after_step(self, step)  # the checkpoint hook has saved if a stop was agreed
                if self.stopping:
                    self._stop(step)
            self.hooks.on_end(self)
        finally:
            self.stop.close()
            self.hooks.on_close(self)
        return self.summary()

    def _stop(self, step: int) -> None:
        signum = self.stop.signal or signal.SIGTERM  # a rank that was not signalled itself
        self.say(f"stopped by signal {signum} at step {step}; checkpoint saved; continue with "
                 f"`tst resume {self.run_dir}`")
        raise Stopped(signum, step)

    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "steps": self.plan.last_step, **self.state.summary(),
                "wall_time_s": self.elapsed(), "checkpoint": str(checkpoint.latest(self.run_dir / rundir.CHECKPOINTS))}
