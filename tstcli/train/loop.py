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
from tstcli.train import checkpoint, rundir
from tstcli.train.progress import Progress
from tstcli.train.schedule import lr_factor
from tstcli.tst import PhaseSpec, make_bags, multi_hot_ce, superposed_embeddings, target_weights


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("run.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norm gains)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)


def phase_loss(model: Llama, rows: torch.Tensor, spec: PhaseSpec, weights, amp_dtype) -> torch.Tensor:
    """Loss of one batch of rows in one phase: bags -> superposed embeddings -> model -> multi-hot CE."""
    with torch.autocast(rows.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        inputs, targets = make_bags(rows, spec)
        hidden = model(inputs_embeds=superposed_embeddings(model.get_input_embeddings().weight, inputs))
        return multi_hot_ce(model.logits(hidden), targets, weights)


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path, data: TrainData, quiet: bool = False):
        r = self.r = recipe
        self.run_dir, self.data, self.quiet = Path(run_dir), data, quiet
        self.device = resolve_device(r.run.device)
        if self.device.type == "cpu":
            # Bitwise reproducibility (and so exact resume) on CPU: without this, torch.compile lowers the
            # embedding backward (a scatter-add) to parallel atomic adds, whose order varies run to run.
            torch.use_deterministic_algorithms(True)
        if r.train.threads:
            torch.set_num_threads(r.train.threads)
        self.amp = torch.bfloat16 if r.train.dtype == "bf16" else None
        self.model = Llama(r.model, data.manifest["vocab_size"])
        self.model.init_weights(torch.Generator().manual_seed(r.run.seed))
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, r.train)
        L, s = r.train.seq_len, r.tst.bag_size
        self.n1 = r.phase1_steps
        self.specs = {1: PhaseSpec(r.tst.mode, s, L), 2: PhaseSpec.next_token(L)}
        self.weights = {1: target_weights(self.specs[1].target_width, r.tst.weighting, r.tst.alpha), 2: None}
        widths = data.pack.widths
        self.widths = widths
        self.loaders = {p: PhaseLoader(data.train, data.pack.rows[p], widths[p], r.run.seed, p, r.train.batch_size)
                        for p in (1, 2)}
        self.val_rows = torch.from_numpy(val_rows(data.val, L + 1, r.eval.batches * r.train.batch_size))
        if len(self.val_rows) == 0:
            raise RecipeError(f"train.seq_len: the validation split ({data.val.total} tokens) holds no row of "
                              f"{L + 1} tokens; lower train.seq_len or raise data.val_fraction")
        self.flops_per_position = self.model.flops_per_position(L)
        self._losses = {}
        self._stop_signal = None
        self.skipped = 0  # non-finite steps skipped so far (train.skip_nonfinite_steps)

    # ---- the compute of one step ----
    def loss_fn(self, phase: int):
        if phase not in self._losses:
            spec, w, model, amp = self.specs[phase], self.weights[phase], self.model, self.amp

            def f(rows):
                return phase_loss(model, rows, spec, w, amp)

            self._losses[phase] = torch.compile(f, dynamic=False) if self.r.train.compile else f
        return self._losses[phase]

    def lr_at(self, step: int) -> float:
        t = self.r.train
        if self.r.tst.restart_schedule and step > self.n1 > 0:
            step, total = step - self.n1, t.steps - self.n1
        else:
            total = t.steps
        return t.lr * lr_factor(step, total, t.warmup_steps, t.schedule, t.decay_fraction, t.min_lr_ratio)

    def train_step(self, step: int) -> dict:
        r, phase = self.r, self.r.phase_at(step)
        k = step - 1 if phase == 1 else step - 1 - self.n1
        rows_np, epoch = self.loaders[phase].batch(k)
        rows = torch.from_numpy(rows_np).to(self.device)
        mb = r.train.micro_batch
        n_micro = r.train.batch_size // mb
        loss_fn = self.loss_fn(phase)
        total = torch.zeros((), device=self.device)
        for i in range(n_micro):
            loss = loss_fn(rows[i * mb:(i + 1) * mb])
            (loss / n_micro).backward()
            total += loss.detach()
        loss = (total / n_micro).item()
        clip = r.train.grad_clip if r.train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)  # nothing of this step is applied
            if self.skipped >= r.train.skip_nonfinite_steps:
                last = checkpoint.latest(self.run_dir / rundir.CHECKPOINTS)
                raise DivergedError(f"training diverged at step {step} (phase {phase}): loss {loss}, grad norm "
                                    f"{grad_norm}; nothing applied; last good checkpoint: {last or 'none'}")
            self.skipped += 1
            return {"phase": phase, "loss": loss, "grad_norm": grad_norm, "epoch": epoch, "skipped": True}
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"phase": phase, "loss": loss, "lr": lr, "grad_norm": grad_norm, "epoch": epoch, "skipped": False}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Ordinary next-token loss on the fixed held-out rows (eager: a few batches, not worth a compile)."""
        rows, mb = self.val_rows.to(self.device), self.r.train.micro_batch
        total = 0.0
        for i in range(0, len(rows), mb):
            part = rows[i:i + mb]
            total += phase_loss(self.model, part, self.specs[2], None, self.amp).item() * len(part)
        return total / len(rows)

    def _switch(self, progress: Progress) -> None:
        t = self.r.tst
        g = torch.Generator().manual_seed(self.r.run.seed + 1)
        if t.reinit_embedding:
            self.model.reinit_embedding(g)
        if t.reinit_head:
            self.model.reinit_head(g)
        if t.reset_optimizer:
            self.optimizer = make_optimizer(self.model, self.r.train)
        progress.message(f"switch: phase 1 -> phase 2 at step {self.n1 + 1} (next-token training from here)")

    # ---- bookkeeping ----
    def _save(self, state: dict) -> Path:
        path = checkpoint.save(self.run_dir / rundir.CHECKPOINTS, state["step"], self.model, self.optimizer,
                               state, to_toml(self.r))
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
        if resume is not None:
            state.update(checkpoint.load(resume, self.model, self.optimizer))
            torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
            self.skipped = state.pop("skipped", 0)
        # Rows logged after the checkpoint (or, with none, by a run killed before its first) are replayed exactly.
        rundir.truncate_metrics(self.run_dir, state["step"] if resume is not None else -1)
        metrics = open(self.run_dir / rundir.METRICS, "a")
        progress = Progress(r.train.steps, state["step"], r.train.log_every, self.quiet)
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
                    row.update(lr=out["lr"], grad_norm=out["grad_norm"], tokens=state["tokens"],
                               positions=state["positions"], flops=state["flops"],
                               elapsed_s=time.perf_counter() - t_start, step_time_s=dt,
                               tokens_per_s=tokens / dt, positions_per_s=positions / dt, epoch=out["epoch"])
                    write(row)
                    progress.step({**row, "last": step == r.train.steps})
                state["step"] = step
                if step % r.eval.every == 0 or step == self.n1 or step == r.train.steps:
                    validate(step, phase)
                if step % r.checkpoint.every == 0 or step == r.train.steps or self._stop_signal:
                    save(step)
                if self._stop_signal:
                    progress.message(f"stopped by signal {self._stop_signal} at step {step}; checkpoint saved; "
                                     f"continue with `tst resume {self.run_dir}`")
                    raise Stopped(self._stop_signal, step)
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
