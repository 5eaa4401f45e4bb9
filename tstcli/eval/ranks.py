"""`tst eval` under torchrun: every rank loads the model and scores its share of the work. This joins the job for
the gathers (gloo for a model on the CPU; nccl on CUDA, the gathers then on a gloo group); the command leaves it."""
from __future__ import annotations

import torch

from tstcli.parallel.dealing import Share
from tstcli.parallel.world import World, host_group, init
from tstcli.recipe import DistributedConfig, Recipe


def join(world: World, device: torch.device, recipe: Recipe | None) -> Share | None:
    """This rank's `Share` of the evaluation, in the job's process group (a run's `distributed.timeout_s`, else the
    default; the backend follows the device); None in a single process."""
    if not world.distributed:
        return None
    timeout_s = (recipe.distributed if recipe is not None else DistributedConfig()).timeout_s
    init(world, device, DistributedConfig(backend="auto", timeout_s=timeout_s))
    return Share(world, host_group(timeout_s) if device.type != "cpu" else None)


def scored_line(share: Share) -> str:
    """Who scored what, for the log: each rank's items (benchmark requests and held-out micro-batches)."""
    return f"eval: {sum(share.scored)} items scored on {share.world.size} ranks ({' + '.join(map(str, share.scored))})"
