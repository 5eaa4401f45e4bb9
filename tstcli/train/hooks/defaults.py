"""The hooks of a training run (called by their priorities: see `tstcli.train.hooks`)."""
from __future__ import annotations

from pathlib import Path

from tstcli.parallel.world import World
from tstcli.recipe import Recipe
from tstcli.train.hooks import Hook
from tstcli.train.hooks.bench import Benchmarks
from tstcli.train.hooks.checkpointing import Checkpointing
from tstcli.train.hooks.compile_notice import CompileNotice
from tstcli.train.hooks.console import Console
from tstcli.train.hooks.init_from import InitFrom
from tstcli.train.hooks.metrics_log import MetricsLog
from tstcli.train.hooks.profiler import Profiler
from tstcli.train.hooks.signals import SignalStop
from tstcli.train.hooks.speed import Speed
from tstcli.train.hooks.switch import PhaseSwitch
from tstcli.train.hooks.trackers import TensorBoard, WandB
from tstcli.train.hooks.validation import Validation


def default_hooks(r: Recipe, world: World, eval_data_dir: Path, console: bool = True) -> list[Hook]:
    """Rank 0 writes (metrics, trackers, console); every rank takes part in the collective side jobs
    (validation, benchmarks' gather, checkpoints, the switch). Rows reach the metrics log first."""
    last = r.plan.last_step
    hooks: list[Hook] = []
    if world.main:
        hooks.append(MetricsLog())
        if r.log.tensorboard:
            hooks.append(TensorBoard())
        if r.log.wandb:
            hooks.append(WandB(r.log.wandb_project))
        if console:
            hooks.append(Console(last, r.train.log_every))
    hooks += [Speed(), SignalStop(), PhaseSwitch(), CompileNotice()]
    if r.model.init_from:
        hooks.append(InitFrom(r.model.init_from))
    if r.train.profile_steps:
        hooks.append(Profiler(*r.train.profile_steps))
    hooks.append(Validation(r.eval.every, r.plan.phase1_steps, last))
    if r.eval.bench:
        data_dir = Path(r.eval.bench_data_dir) if r.eval.bench_data_dir else eval_data_dir
        hooks.append(Benchmarks(r.eval.bench, r.eval.bench_limit, r.eval.bench_every, last, data_dir))
    hooks.append(Checkpointing(r.checkpoint.every, r.checkpoint.keep, last, r.checkpoint.async_))
    return hooks
