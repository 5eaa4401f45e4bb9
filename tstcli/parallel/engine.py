"""The training objective as this world runs it. Activation checkpointing, torch.compile and DDP / FSDP2 are applied
here, in torchtitan's order (checkpointing, then compile, then sharding), and nowhere else: the model and the
objective know nothing of them.

- Activation checkpointing wraps the chosen blocks with PyTorch's `checkpoint_wrapper` (recompute in backward).
- A single process and DDP compile the whole step (one graph per phase); FSDP2 compiles each block before
  sharding it, because the collectives between blocks break a whole-step graph.
- DDP replicates parameters and all-reduces gradients; FSDP2 shards parameters, gradients and optimizer state per
  block, then the root (embedding, final norm, head), gathering in the compute dtype and reducing in fp32.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from tstcli.parallel.world import World
from tstcli.recipe import DistributedConfig

# activation_checkpointing policy -> every k-th block is recomputed (0: none)
AC_EVERY = {"none": 0, "selective": 2, "full": 1}


def checkpointed_blocks(policy: str, n_layers: int) -> list[int]:
    """Indices of the blocks whose activations are recomputed in the backward pass under `policy`."""
    every = AC_EVERY[policy]
    return list(range(0, n_layers, every)) if every else []


def apply_activation_checkpointing(blocks: nn.ModuleList, policy: str) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i in checkpointed_blocks(policy, len(blocks)):
        blocks[i] = checkpoint_wrapper(blocks[i])  # state-dict names unchanged for DCP (it strips the wrapper)


def _wrap(objective: nn.Module, blocks: nn.ModuleList, cfg: DistributedConfig, world: World,
          amp_dtype: torch.dtype | None, compile_blocks: bool) -> nn.Module:
    if not world.distributed:
        return objective
    if cfg.strategy == "ddp":
        with warnings.catch_warnings():  # broadcast_buffers=False is what we want; torch warns about its future
            warnings.simplefilter("ignore", FutureWarning)
            # broadcast_buffers off: the only buffers are the RoPE tables, identical on every rank.
            return nn.parallel.DistributedDataParallel(objective, broadcast_buffers=False)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        if compile_blocks:
            block.compile(dynamic=False)
        fully_shard(block, mp_policy=mp)
    fully_shard(objective, mp_policy=mp)
    return objective


class Engine:
    """Wraps an `Objective` (whose `.model` has `.layers`) for this world. `step_fn(phase)` is the function a
    training step calls on a micro-batch of rows; `objective` is the module to call for evaluation (under FSDP2
    it is the sharded root, whose forward gathers the parameters)."""

    def __init__(self, objective: nn.Module, cfg: DistributedConfig, world: World, amp_dtype, compile: bool):
        blocks = objective.model.layers
        apply_activation_checkpointing(blocks, cfg.activation_checkpointing)
        self.fsdp = world.distributed and cfg.strategy == "fsdp"
        self.objective = objective
        self.module = _wrap(objective, blocks, cfg, world, amp_dtype, compile_blocks=compile and self.fsdp)
        self.compiles = compile  # the first step of each phase builds a graph (tens of seconds on a CPU)
        self._step_fns: dict[int, object] = {}

    def built(self, phase: int) -> bool:
        return phase in self._step_fns

    def step_fn(self, phase: int):
        if phase not in self._step_fns:
            module = self.module

            def f(rows):
                return module(rows, phase)

            whole = self.compiles and not self.fsdp
            self._step_fns[phase] = torch.compile(f, dynamic=False) if whole else f
        return self._step_fns[phase]

    def scoring_model(self) -> nn.Module:
        """The model to score with outside a training step, on every rank (in-loop benchmarks): the model itself;
        under FSDP2 a plain fp32 copy of the root whose blocks gather their weights one at a time
        (`parallel/gathered.py`), so each forward is a collective every rank must run as often."""
        if not self.fsdp:
            return self.objective.model
        from tstcli.parallel.gathered import gathered_model

        # After a forward without a backward (validation) the root stays unsharded, in the gathering dtype.
        self.module.reshard()
        return gathered_model(self.objective.model)

    def gradient_sync(self, enabled: bool):
        """Context for one micro-batch: with `enabled` False, gradients accumulate locally (no communication)."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext() if enabled else self.module.no_sync()
        if hasattr(self.module, "set_requires_gradient_sync"):  # an FSDP2 module
            self.module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
