"""The training loop: the step math and a short loop. Everything else is a hook (`tstcli.train.hooks`).

Each optimizer step asks the phase plan (`recipe.plan.phase_at(step)`) which phase it is in, reads its rows from
that phase's loader (checked against the plan's row width), and runs the objective (bags -> superposed embeddings
-> model -> multi-hot CE) forward and backward over the micro-batches. Phase 2 is the same code with bags of one token, i.e. ordinary next-token training. Model, optimizer
state and the LR schedule carry straight through the switch unless an ablation hook changes them.
"""
from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tstcli.errors import DivergedError, Stopped
from tstcli.model import Llama
from tstcli.objective import HeldOut, Objective, heldout_loss
from tstcli.parallel.engine import Engine
from tstcli.parallel.world import StopVote, World, assign_full, full_value, mean_across
from tstcli.recipe import Recipe
from tstcli.run import checkpoint, init_from, rundir
from tstcli.train import float8, hardware
from tstcli.train.data import TrainData, to_device
from tstcli.train.hooks import Hook, Hooks
from tstcli.train.optim import apply_update, lr_at, make_optimizer
from tstcli.train.steplog import Read, StepLog, StepResult
from tstcli.tst import loss_specs


@dataclass
class TrainState:
    """The counters a checkpoint carries (with the model, optimizer and RNG)."""
    step: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    positions: int = 0
    flops: int = 0
    tokens_phase: dict = field(default_factory=lambda: {"1": 0, "2": 0})
    val_loss: float | None = None
    skipped: int = 0  # non-finite steps skipped so far (train.skip_nonfinite_steps)
    mix_tokens: dict = field(default_factory=dict)  # raw tokens read so far per data.mix entry name


class Trainer:
    """One rank's training loop. Under torchrun every rank runs it in lock-step; the hooks decide who writes."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: TrainData, world: World, device: torch.device,
                 hooks: list[Hook] = ()):
        r = self.r = recipe
        plan = self.plan = recipe.plan
        self.run_dir, self.data, self.world, self.device = Path(run_dir), data, world, device
        if device.type == "cpu":
            # Bitwise reproducibility (and so exact resume) on CPU: without this, torch.compile lowers the
            # embedding backward (a scatter-add) to parallel atomic adds, whose order varies run to run.
            torch.use_deterministic_algorithms(True)
        if r.train.threads:
            torch.set_num_threads(r.train.threads)
        self.micro = r.train.rows_per_micro_batch(world.size)
        self.amp = torch.bfloat16 if r.train.dtype == "bf16" else None
        self.model = Llama(r.model, data.manifest["vocab_size"])
        self.model.init_weights(torch.Generator().manual_seed(r.run.seed))  # the same on every rank
        self.model.to(device)
        if r.train.float8:  # before compile and FSDP wrap the blocks (checked at start: float8.check)
            float8.convert(self.model)
        self.engine = Engine(Objective(self.model, plan.specs, loss_specs(plan, r.tst, r.train.loss_chunk_size),
                                       self.amp), r.distributed, world, self.amp, r.train.compile)
        self.optimizer = make_optimizer(self.model, r.train)
        self.loaders = data.loaders(plan, r.run.seed)
        self.val_rows = torch.from_numpy(data.heldout_rows(r))
        self.flops_per_position = self.model.flops_per_position(r.train.seq_len)
        self.device_name, self.peak_flops = hardware.peak_flops(device, self.amp is not None)
        self.state = TrainState()
        self.resumed_from: Path | None = None  # the checkpoint this process continued from
        self._clock = time.perf_counter()  # wall time counts from here, minus the run's earlier elapsed time
        self.hooks = Hooks(hooks)
        self.stop_signal: int | None = None  # set by the signal hook on this rank
        self.stop_agreed = False  # some rank was asked to stop: every rank saves and stops after this step
        self.vote = StopVote(world, r.distributed.timeout_s)
        self.log = StepLog()  # rows of steps whose scalars are still on the device

    # ---- the step math ----
    def lr_at(self, step: int) -> float:
        return lr_at(self.plan, self.r.train, self.r.tst.restart_schedule, step)

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

    def _agree(self, ce: torch.Tensor, metrics: dict) -> tuple[torch.Tensor, dict]:
        """The mean loss and metrics over ranks, in one collective on the device (nothing read by the host). A
        vector metric `v` is reported as `v_min` and `v_max`."""
        names = sorted(metrics)
        flat = mean_across(torch.cat([ce.reshape(1), *(metrics[n].reshape(-1) for n in names)]).double())
        out, pos = {}, 1
        for name in names:
            n = metrics[name].numel()
            values = flat[pos:pos + n]
            pos += n
            out.update({name: values[0]} if metrics[name].ndim == 0 else
                       {f"{name}_min": values.min(), f"{name}_max": values.max()})
        return flat[0], out

    def train_step(self, step: int) -> StepResult:
        """One optimizer step, queued on the device without waiting for it: the update is applied only if the loss
        and gradient norm are finite (decided on the device); `flush` reads the outcome."""
        r, phase = self.r, self.plan.phase_at(step)
        t0 = time.perf_counter()
        rows_np, epoch = self.loaders[phase].batch(self.plan.step_in_phase(step), self.world.rank, self.world.size)
        self.plan.check_rows(phase, rows_np.shape)
        rows = to_device(rows_np, self.device)
        data_s = time.perf_counter() - t0
        compiling = self.engine.compiles and not self.engine.built(phase)
        if compiling:  # say why the terminal goes quiet
            self.say(f"compiling the phase-{phase} step with torch.compile (once per phase and process; "
                     "tens of seconds on a CPU)...")
        loss, metrics = self._agree(*self._accumulate(phase, rows))
        if compiling:
            self.say(f"phase-{phase} step compiled and run in {time.perf_counter() - t0:.1f} s")
        self.hooks.after_backward(self, step)
        clip = r.train.grad_clip if r.train.grad_clip > 0 else float("inf")
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        apply_update(self.optimizer, ok)
        self.stop_agreed = self.vote.cast(self.stop_signal is not None)
        return StepResult(phase, epoch, data_s, lr, loss, grad_norm, metrics, ok)

    @torch.no_grad()
    def heldout(self) -> HeldOut:
        """Ordinary next-token loss on the fixed held-out rows (eager: a few batches, not worth a compile).
        Under FSDP2 every rank scores the same rows (the sharded forward needs all of them). The queued steps are
        read first: the evaluation waits for the device, and that wait is theirs (their step time, their MFU)."""
        self.flush()
        objective = self.engine.objective
        return heldout_loss(lambda part: objective(part, 2)[1]["ce"], self.val_rows.to(self.device), self.micro)

    # ---- rows, messages, state ----
    def emit(self, row: dict) -> None:
        """A row after the rows of every earlier step (which are read from the device first)."""
        self.flush()
        self.hooks.on_row(self, row)

    def say(self, text: str) -> None:
        self.flush()
        self.hooks.on_message(self, text)

    def elapsed(self) -> float:
        return time.perf_counter() - self._clock

    def checkpoint_state(self) -> dict:
        s = asdict(self.state)
        s["elapsed_s"] = self.elapsed()
        return {**s, "phase": self.plan.phase_at(max(self.state.step, 1)),
                "torch_rng": torch.get_rng_state().tolist()}

    def _initial_weights(self) -> list[str]:
        """A fresh start from `model.init_from`'s weights (every rank, into its shards), else the random ones."""
        if not self.r.model.init_from:
            return []
        full, where = init_from.weights(self.r.model.init_from)
        with torch.no_grad():
            for name, param in self.model.named_parameters():  # activation checkpointing wraps blocks: unwrap names
                assign_full(param, full[name.replace("_checkpoint_wrapped_module.", "")])
        return [f"init: weights from {where}"]

    def _restore(self, ckpt: Path) -> list[str]:
        saved = checkpoint.load(ckpt, self.model, self.optimizer)
        torch.set_rng_state(torch.tensor(saved.pop("torch_rng"), dtype=torch.uint8))
        world = saved.pop("world_size", 1)
        known = TrainState.__dataclass_fields__
        self.state = TrainState(**{k: v for k, v in saved.items() if k in known})
        if world == self.world.size:
            return []
        return [f"resume: checkpoint written by {world} process(es), continuing on {self.world.size}: state "
                "resharded; the global batch and its rows are unchanged"]

    def record(self, step: int, out: StepResult, dt: float) -> None:
        """Count the step's tokens, positions and FLOPs into the state (they do not depend on the device's outcome)
        and queue its row until the next `flush`."""
        r, s, phase = self.r, self.state, out.phase
        tokens, positions = r.train.batch_size * self.plan.row_widths[phase], r.train.batch_size * r.train.seq_len
        s.tokens += tokens
        s.tokens_phase[str(phase)] += tokens
        s.positions += positions
        s.flops += self.flops_per_position * positions
        for name, n in self.data.mix_tokens(self.loaders, phase, self.plan.step_in_phase(step)).items():
            s.mix_tokens[name] = s.mix_tokens.get(name, 0) + n
        self.log.add(step, out, {"tokens": s.tokens, "positions": s.positions, "flops": s.flops,
                                 "elapsed_s": self.elapsed(), "dt": dt, "step_tokens": tokens,
                                 "step_positions": positions, "mix_tokens": dict(s.mix_tokens)})

    def flush(self) -> None:
        """Read the queued steps from the device and emit their rows in order: a train row, or a skip row for a
        non-finite step within `train.skip_nonfinite_steps` (its update was not applied); past that bound the run
        stops (DivergedError) with the rows before it written."""
        for read in self.log.read():
            if not read.ok:
                if self.state.skipped >= self.r.train.skip_nonfinite_steps:
                    last = checkpoint.latest(self.run_dir / rundir.CHECKPOINTS)
                    raise DivergedError(f"training diverged at step {read.step} (phase {read.out.phase}): loss "
                                        f"{read.loss}, grad norm {read.grad_norm}; nothing applied; last good "
                                        f"checkpoint: {last or 'none'}")
                self.state.skipped += 1
            self.hooks.on_row(self, self._row(read))

    def _row(self, x: Read) -> dict:
        r, phase, h = self.r, x.out.phase, x.host
        if not x.ok:
            return {"kind": "skip", "step": x.step, "phase": phase, "loss": repr(x.loss),
                    "grad_norm": repr(x.grad_norm), "skipped_total": self.state.skipped}
        row = {"kind": "train", "step": x.step, "phase": phase, "loss": x.loss}
        if phase == 1:
            row[f"{r.tst.loss}_loss"] = x.loss  # mce_loss: mean of s CEs, floor about log s (or bce/hinge_loss)
        # The host's time of the step plus its share of the read's wait: on a GPU the host runs ahead and the
        # wait is where the device's time shows; on a CPU the wait is nil and this is the step's own time.
        dt = h["dt"] + x.wait_s
        # Throughput of the whole job; MFU per device against its peak (None when unknown).
        mfu = (self.flops_per_position * h["step_positions"] / dt / (self.peak_flops * self.world.size)
               if self.peak_flops else None)
        row.update(lr=x.out.lr, grad_norm=x.grad_norm, tokens=h["tokens"], positions=h["positions"],
                   flops=h["flops"], elapsed_s=h["elapsed_s"], step_time_s=dt, tokens_per_s=h["step_tokens"] / dt,
                   positions_per_s=h["step_positions"] / dt, mfu=mfu, data_share=x.out.data_s / dt,
                   epoch=x.out.epoch, **x.metrics)
        if h["mix_tokens"]:
            row["mix_tokens"] = h["mix_tokens"]
        return row

    # ---- the loop ----
    def run(self, resume: Path | None = None) -> dict:
        """Train from the start, or from checkpoint `resume`, to `train.steps`; returns the summary."""
        notes = self._restore(resume) if resume is not None else self._initial_weights()
        self.resumed_from = resume
        self._clock = time.perf_counter() - self.state.elapsed_s
        try:
            self.hooks.on_start(self)
            for note in notes:
                self.say(note)
            for step in range(self.state.step + 1, self.r.train.steps + 1):
                self.hooks.before_step(self, step)
                t0 = time.perf_counter()
                out = self.train_step(step)
                self.record(step, out, time.perf_counter() - t0)
                self.state.step = step
                if step % self.r.train.log_every == 0 or step == self.r.train.steps:
                    self.flush()
                self.hooks.after_step(self, step)  # the checkpoint hook has saved if a stop was agreed
                if self.stop_agreed:
                    self._stop(step)
            self.hooks.on_end(self)
        finally:
            self.vote.close()
            self.hooks.on_close(self)
        return self.summary()

    def _stop(self, step: int) -> None:
        signum = self.stop_signal or signal.SIGTERM  # a rank that was not signalled itself
        self.say(f"stopped by signal {signum} at step {step}; checkpoint saved; continue with "
                 f"`tst resume {self.run_dir}`")
        raise Stopped(signum, step)

    def summary(self) -> dict:
        s = self.state
        return {"run_dir": str(self.run_dir), "steps": self.r.train.steps, "final_val_loss": s.val_loss,
                "tokens": s.tokens, "tokens_phase1": s.tokens_phase["1"], "tokens_phase2": s.tokens_phase["2"],
                "positions": s.positions, "flops": s.flops, "wall_time_s": self.elapsed(),
                "checkpoint": str(checkpoint.latest(self.run_dir / rundir.CHECKPOINTS))}
