"""The training loop: the one place that knows about phases.

Each optimizer step asks `recipe.phase_at(step)` which phase it is in, reads its rows from that phase's loader,
turns them into (input bags, target bags) and scores them with the multi-hot CE. Phase 2 is the same code with
bags of one token, i.e. ordinary next-token training. Model, optimizer state and the LR schedule carry straight
through the switch unless an ablation switch says otherwise.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tstcli.data import packing, shards
from tstcli.data.loader import PhaseLoader, val_rows
from tstcli.errors import DivergedError, RecipeError, Stopped
from tstcli.model import Llama
from tstcli.recipe import Recipe, TrainConfig, to_toml
from tstcli.train import checkpoint, distributed, hardware, rundir
from tstcli.train.objective import Objective, cross_entropy_of, mean_loss
from tstcli.train.progress import Progress
from tstcli.train.schedule import lr_factor
from tstcli.tst import PhaseSpec, target_weights


@dataclass
class TrainData:
    data_dir: Path
    manifest: dict
    manifest_sha: str
    pack: packing.Pack
    train: shards.TokenStore
    val: shards.TokenStore


def open_data(r: Recipe, data_dir: Path, full_verify: bool = False) -> tuple[TrainData, bool]:
    """Memory-map the prepared shards and the recipe's pack (built now if missing). Returns (data, pack_built)."""
    manifest = shards.read_manifest(data_dir)
    shards.verify(data_dir, manifest, full=full_verify)
    sha = shards.manifest_sha256(data_dir)
    pack, built = packing.ensure_pack(r, data_dir, manifest, sha)
    return TrainData(data_dir, manifest, sha, pack, shards.TokenStore(data_dir, manifest, "train"),
                     shards.TokenStore(data_dir, manifest, "val")), built


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norm gains)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)


class Trainer:
    """One rank's training loop. Under torchrun every rank runs it in lock-step; rank 0 alone writes metrics,
    progress and the checkpoint's metadata. A single process is the world of one."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: TrainData, quiet: bool = False,
                 world: distributed.World | None = None, device: torch.device | None = None):
        r = self.r = recipe
        self.world = world or distributed.World()
        if device is None:
            self.world, device = distributed.start(r, {})
        self.run_dir, self.data, self.device = Path(run_dir), data, device
        self.quiet = quiet or not self.world.main
        if self.device.type == "cpu":
            # Bitwise reproducibility (and so exact resume) on CPU: without this, torch.compile lowers the
            # embedding backward (a scatter-add) to parallel atomic adds, whose order varies run to run.
            torch.use_deterministic_algorithms(True)
        if r.train.threads:
            torch.set_num_threads(r.train.threads)
        self.micro = r.train.micro_batch_for(self.world.size)
        self.amp = torch.bfloat16 if r.train.dtype == "bf16" else None
        self.model = Llama(r.model, data.manifest["vocab_size"])
        self.model.init_weights(torch.Generator().manual_seed(r.run.seed))  # the same on every rank
        self.model.to(self.device)
        self.model.set_activation_checkpointing(r.distributed.activation_checkpointing)
        L, s = r.train.seq_len, r.tst.bag_size
        self.n1 = r.phase1_steps
        specs = {1: PhaseSpec(r.tst.mode, s, L), 2: PhaseSpec.next_token(L)}
        weights = {1: target_weights(specs[1].target_width, r.tst.weighting, r.tst.alpha), 2: None}
        self.objective = Objective(self.model, specs, weights, self.amp)
        self.fsdp = self.world.distributed and r.distributed.strategy == "fsdp"
        # FSDP2 compiles block by block (inside `parallelize`); otherwise the whole step is one compiled graph.
        self.engine = distributed.parallelize(self.objective, self.model.layers, r.distributed, self.world,
                                              self.amp, compile_blocks=r.train.compile)
        self.optimizer = make_optimizer(self.model, r.train)
        self.widths = data.pack.widths
        self.loaders = {p: PhaseLoader(data.train, data.pack.rows[p], self.widths[p], r.run.seed, p, r.train.batch_size)
                        for p in (1, 2)}
        self.val_rows = torch.from_numpy(val_rows(data.val, L + 1, r.eval.batches * r.train.batch_size))
        if len(self.val_rows) == 0:
            raise RecipeError(f"train.seq_len: the validation split ({data.val.total} tokens) holds no row of "
                              f"{L + 1} tokens; lower train.seq_len or raise data.val_fraction")
        self.flops_per_position = self.model.flops_per_position(L)
        self.device_name, self.peak_flops = hardware.peak_flops(self.device, self.amp is not None)
        self._losses = {}
        self._stop_signal = None
        self.stop_agreed = False  # some rank was asked to stop: every rank saves and stops after this step
        self.skipped = 0  # non-finite steps skipped so far (train.skip_nonfinite_steps)

    # ---- the compute of one step ----
    def loss_fn(self, phase: int):
        if phase not in self._losses:
            engine = self.engine

            def f(rows):
                return engine(rows, phase)

            whole = self.r.train.compile and not self.fsdp
            self._losses[phase] = torch.compile(f, dynamic=False) if whole else f
        return self._losses[phase]

    def lr_at(self, step: int) -> float:
        t = self.r.train
        if self.r.tst.restart_schedule and step > self.n1 > 0:
            step, total = step - self.n1, t.steps - self.n1
        else:
            total = t.steps
        return t.lr * lr_factor(step, total, t.warmup_steps, t.schedule, t.decay_fraction, t.min_lr_ratio)

    def _accumulate(self, phase: int, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward and backward over the micro-batches of this rank's rows (gradients communicated on the last).
        Returns the mean CE and the mean of any other statistics (a mixture of experts' router figures)."""
        mb = self.micro
        n_micro = len(rows) // mb
        loss_fn = self.loss_fn(phase)
        ce = torch.zeros((), device=self.device)
        extra: dict = {}
        for i in range(n_micro):
            with distributed.gradient_sync(self.engine, i == n_micro - 1):
                loss, stats = loss_fn(rows[i * mb:(i + 1) * mb])
                (loss / n_micro).backward()
            ce += cross_entropy_of(loss, stats).detach()  # logged: the CE, without auxiliary losses
            for name, v in stats.items():
                if name != "ce":
                    extra[name] = extra[name] + v if name in extra else v
        return ce / n_micro, {name: v / n_micro for name, v in extra.items()}

    def _agree(self, ce: torch.Tensor, extra: dict) -> tuple[float, dict]:
        """One collective for the step's scalars: the mean loss over ranks, the router statistics, and whether
        any rank was asked to stop (sets `stop_agreed`: all ranks stop after the same step)."""
        names = sorted(extra)
        flat = [x for name in names for x in extra[name].reshape(-1).tolist()]
        summed = distributed.sum_across([ce.item(), float(self._stop_signal is not None), *flat])
        W = self.world.size
        self.stop_agreed = summed[1] > 0
        means, pos = {}, 2
        for name in names:
            n = extra[name].numel()
            means[name] = [x / W for x in summed[pos:pos + n]]
            pos += n
        router = {}
        if means:
            router = {"moe_aux_loss": means["moe_aux_loss"][0], "moe_z_loss": means["moe_z_loss"][0],
                      "expert_load_min": min(means["expert_load"]), "expert_load_max": max(means["expert_load"])}
        return summed[0] / W, router

    def train_step(self, step: int) -> dict:
        r, phase = self.r, self.r.phase_at(step)
        step_in_phase = step - 1 if phase == 1 else step - 1 - self.n1
        t0 = time.perf_counter()
        rows_np, epoch = self.loaders[phase].batch(step_in_phase, self.world.rank, self.world.size)
        rows = torch.from_numpy(rows_np).to(self.device, non_blocking=True)
        data_s = time.perf_counter() - t0
        loss, router = self._agree(*self._accumulate(phase, rows))
        clip = r.train.grad_clip if r.train.grad_clip > 0 else float("inf")
        grad_norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)).item()
        out = {"phase": phase, "loss": loss, "grad_norm": grad_norm, "epoch": epoch, "data_s": data_s,
               "router": router}
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)  # nothing of this step is applied
            if self.skipped >= r.train.skip_nonfinite_steps:
                last = checkpoint.latest(self.run_dir / rundir.CHECKPOINTS)
                raise DivergedError(f"training diverged at step {step} (phase {phase}): loss {loss}, grad norm "
                                    f"{grad_norm}; nothing applied; last good checkpoint: {last or 'none'}")
            self.skipped += 1
            return {**out, "skipped": True}
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**out, "lr": lr, "skipped": False}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Ordinary next-token loss on the fixed held-out rows (eager: a few batches, not worth a compile).
        Under FSDP2 every rank scores the same rows (the sharded forward needs all of them)."""
        return mean_loss(lambda part: cross_entropy_of(*self.objective(part, 2)), self.val_rows.to(self.device),
                         self.micro)

    def _switch(self, progress: Progress) -> None:
        t = self.r.tst
        g = torch.Generator().manual_seed(self.r.run.seed + 1)
        for wanted, param in ((t.reinit_embedding, self.model.tok_embeddings.weight),
                              (t.reinit_head, self.model.output.weight)):
            if wanted:  # drawn in full on the CPU, so the values do not depend on the device or the sharding
                distributed.assign_full(param, torch.empty(param.shape).normal_(0.0, self.r.model.init_std,
                                                                                generator=g))
        if t.reset_optimizer:
            self.optimizer = make_optimizer(self.model, self.r.train)
        progress.message(f"switch: phase 1 -> phase 2 at step {self.n1 + 1} (next-token training from here)")

    # ---- bookkeeping ----
    def _save(self, state: dict) -> Path:
        path = checkpoint.save(self.run_dir / rundir.CHECKPOINTS, state["step"], self.model, self.optimizer,
                               state, to_toml(self.r), self.world)
        if self.world.main:
            checkpoint.prune(self.run_dir / rundir.CHECKPOINTS, self.r.checkpoint.keep)
        return path

    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:  # second signal: stop now, the last checkpoint is intact
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self._stop_signal = signum

    def run(self, resume: Path | None = None) -> dict:
        r = self.r
        ckpt_root = self.run_dir / rundir.CHECKPOINTS
        state = {"step": 0, "elapsed_s": 0.0, "tokens": 0, "positions": 0, "flops": 0,
                 "tokens_phase": {"1": 0, "2": 0}, "val_loss": None}
        progress = Progress(r.train.steps, 0, r.train.log_every, self.quiet)
        if resume is not None:
            state.update(checkpoint.load(resume, self.model, self.optimizer))
            torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
            self.skipped = state.pop("skipped", 0)
            saved_world = state.pop("world_size", 1)
            if saved_world != self.world.size:
                progress.message(f"resume: checkpoint written by {saved_world} process(es), continuing on "
                                 f"{self.world.size}: state resharded; the global batch and its rows are unchanged")
            progress.set_position(state["step"])
        if self.world.main:
            # Rows logged after the checkpoint (or, with none, by a run killed before its first) are replayed.
            rundir.truncate_metrics(self.run_dir, state["step"] if resume is not None else -1)
        metrics = open(self.run_dir / rundir.METRICS, "a") if self.world.main else open(os.devnull, "w")
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        t_start = time.perf_counter() - state["elapsed_s"]

        def write(row: dict) -> None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()

        def validate(step: int, phase: int) -> None:
            state["val_loss"] = self.evaluate()
            write({"kind": "val", "step": step, "phase": phase, "val_loss": state["val_loss"],
                   "elapsed_s": time.perf_counter() - t_start})
            progress.validation(step, state["val_loss"])

        def save(step: int) -> Path:
            metrics.flush()
            if self.world.main:
                os.fsync(metrics.fileno())
            state["elapsed_s"] = time.perf_counter() - t_start
            return self._save({**state, "step": step, "phase": r.phase_at(step), "skipped": self.skipped,
                               "torch_rng": torch.get_rng_state().tolist()})

        last_epoch = {1: None, 2: None}
        try:
            if state["step"] == 0:
                validate(0, r.phase_at(1))
            for step in range(state["step"] + 1, r.train.steps + 1):
                if step == self.n1 + 1 and self.n1 > 0:
                    self._switch(progress)
                t0 = time.perf_counter()
                out = self.train_step(step)
                dt = time.perf_counter() - t0
                phase = out["phase"]
                if last_epoch[phase] is not None and out["epoch"] > last_epoch[phase]:
                    progress.message(f"phase {phase}: its rows are exhausted at step {step}; epoch "
                                     f"{out['epoch'] + 1} re-reads them in a new order (the corpus repeats)")
                last_epoch[phase] = out["epoch"]
                tokens = r.train.batch_size * self.widths[phase]
                positions = r.train.batch_size * r.train.seq_len
                state["tokens"] += tokens
                state["tokens_phase"][str(phase)] += tokens
                state["positions"] += positions
                state["flops"] += self.flops_per_position * positions
                if out["skipped"]:  # a non-finite step within train.skip_nonfinite_steps: logged, not applied
                    write({"kind": "skip", "step": step, "phase": phase, "loss": repr(out["loss"]),
                           "grad_norm": repr(out["grad_norm"]), "skipped_total": self.skipped})
                    progress.message(f"step {step} (phase {phase}): non-finite loss {out['loss']} / grad norm "
                                     f"{out['grad_norm']}: update skipped ({self.skipped} of at most "
                                     f"{r.train.skip_nonfinite_steps})")
                else:
                    row = {"kind": "train", "step": step, "phase": phase, "loss": out["loss"]}
                    if phase == 1:
                        row["mce_loss"] = out["loss"]  # phase-1 loss: mean of s CEs, floor about log s
                    # Throughput of the whole job; MFU per device against its peak (None when unknown).
                    mfu = (self.flops_per_position * positions / dt / (self.peak_flops * self.world.size)
                           if self.peak_flops else None)
                    row.update(lr=out["lr"], grad_norm=out["grad_norm"], tokens=state["tokens"],
                               positions=state["positions"], flops=state["flops"],
                               elapsed_s=time.perf_counter() - t_start, step_time_s=dt,
                               tokens_per_s=tokens / dt, positions_per_s=positions / dt, mfu=mfu,
                               data_share=out["data_s"] / dt, epoch=out["epoch"], **out["router"])
                    write(row)
                    progress.step({**row, "last": step == r.train.steps})
                state["step"] = step
                if step % r.eval.every == 0 or step == self.n1 or step == r.train.steps:
                    validate(step, phase)
                if step % r.checkpoint.every == 0 or step == r.train.steps or self.stop_agreed:
                    save(step)
                if self.stop_agreed:  # every rank saw the same decision (see train_step)
                    signum = self._stop_signal or signal.SIGTERM  # a rank that was not signalled itself
                    progress.message(f"stopped by signal {signum} at step {step}; checkpoint saved; "
                                     f"continue with `tst resume {self.run_dir}`")
                    raise Stopped(signum, step)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            progress.close()
            metrics.close()
        elapsed = time.perf_counter() - t_start
        return {"run_dir": str(self.run_dir), "steps": r.train.steps, "final_val_loss": state["val_loss"],
                "tokens": state["tokens"], "tokens_phase1": state["tokens_phase"]["1"],
                "tokens_phase2": state["tokens_phase"]["2"], "positions": state["positions"],
                "flops": state["flops"], "wall_time_s": elapsed,
                "checkpoint": str(checkpoint.latest(ckpt_root))}
