"""This process's place in the job (launched by torchrun, or alone) and the few collectives the rest of tst uses.

A single process (no torchrun) is world size 1: every collective here is then the identity. Nothing here knows
about TST phases or the model.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tstcli.errors import TstError, UsageError
from tstcli.recipe import DistributedConfig, Recipe, TrainConfig


@dataclass(frozen=True)
class World:
    """This process's place in the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK; read by the CLI)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env) -> World:
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_for(world: World, device_type: str) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(device_type)


def init(world: World, device: torch.device, cfg: DistributedConfig) -> None:
    """Join the process group (env:// rendezvous set up by torchrun)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout_s),
                            device_id=device if device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def raise_together(world: World, error: BaseException | None) -> None:
    """After a step only rank 0 runs (taking the run's lock, checking and creating the run directory): its outcome
    reaches every rank, so a refusal (a `TstError`) is the same one line and exit code from every rank, where the
    others would otherwise fail in their next collective as "a bug in tst". A barrier as well."""
    if world.distributed:
        box = [None if error is None else (type(error), error.message) if isinstance(error, TstError) else
               (None, f"rank 0 failed: {type(error).__name__}")]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            kind, message = box[0]
            raise kind(message) if kind is not None else RuntimeError(message)
    if error is not None:
        raise error


def barrier(group=None) -> None:
    if dist.is_initialized():
        dist.barrier(group=group)


def sum_across(values: list[float]) -> list[float]:
    """Sum a few scalars over all ranks in one collective (the identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def mean_across(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks, computed on its device: the collective is queued, nothing waits for
    it (the tensor itself in a single process)."""
    if not dist.is_initialized():
        return t
    dist.all_reduce(t)
    return t / dist.get_world_size()


def host_group(timeout_s: float):
    """A process group on the CPU (gloo) for collectives the hosts run beside training: every rank must create it
    at the same point. Collectives from two threads must not share a group (their order would differ by rank).
    `timeout_s`: the recipe's `distributed.timeout_s` (a new group does not inherit the default group's timeout)."""
    if not dist.is_initialized():
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def mean_stats_across(loss: torch.Tensor, metrics: dict) -> tuple[torch.Tensor, dict]:
    """The mean of a loss and of named metrics over ranks, in one collective on the device (nothing read by the
    host). A vector metric `v` is reported as `v_min` and `v_max` of its mean."""
    names = sorted(metrics)
    flat = mean_across(torch.cat([loss.reshape(1), *(metrics[n].reshape(-1) for n in names)]).double())
    out, pos = {}, 1
    for name in names:
        n = metrics[name].numel()
        values = flat[pos:pos + n]
        pos += n
        out.update({name: values[0]} if metrics[name].ndim == 0 else
                   {f"{name}_min": values.min(), f"{name}_max": values.max()})
    return flat[0], out


class StopVote:
    """Whether any rank was asked to stop (a signal), agreed by all ranks after the same step without making the
    host wait for the device: each step's vote is an all-reduce on a CPU group, started at the step and read at
    the next, so under torchrun the ranks stop one step after the signalled one. A single process decides at once."""

    def __init__(self, world: World, timeout_s: float):
        self.group = host_group(timeout_s) if world.distributed else None
        self._pending = None

    def cast(self, stop: bool) -> bool:
        """This step's vote; returns whether the ranks agreed to stop now."""
        if self.group is None:
            return stop
        agreed = False
        if self._pending is not None:
            work, votes = self._pending
            work.wait()
            agreed = votes.item() > 0
        votes = torch.tensor([float(stop)])
        self._pending = (dist.all_reduce(votes, group=self.group, async_op=True), votes)
        return agreed

    def close(self) -> None:
        self._pending = None  # every rank cast the same votes: the last all-reduce completes without us


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (e.g. the gradient norm under FSDP2); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def assign_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Set a parameter from its full value, whether it is a plain tensor or an FSDP2 shard (DTensor)."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        full = distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(full)


def assign_state(model: torch.nn.Module, full: dict) -> None:
    """Every parameter of `model` from a full (unsharded) state dict, each rank into its own shards; names as an
    unwrapped model has them (activation checkpointing wraps blocks)."""
    for name, param in model.named_parameters():
        assign_full(param, full[name.replace("_checkpoint_wrapped_module.", "")])


def check_batch_split(t: TrainConfig, world_size: int) -> None:
    mb = t.rows_per_micro_batch(world_size)
    if mb < 1 or t.batch_size % (world_size * mb):
        raise UsageError(f"train.batch_size: {t.batch_size} rows do not split evenly into {world_size} ranks x "
                         f"micro-batches of {mb} (train.micro_batch_size); use a multiple of "
                         f"{world_size * max(mb, 1)}")


def deterministic_kernels(compiled: bool) -> None:
    """Deterministic algorithms, for bitwise resume and ranks that agree. Inductor's own switch is set only when
    something compiles: `torch.use_deterministic_algorithms` imports inductor to set it (~0.5 s of every command)."""
    if compiled:
        torch.use_deterministic_algorithms(True)
    else:  # the same eager switch, without the import
        torch._C._set_deterministic_algorithms(True)


def start(r: Recipe, env) -> tuple[World, torch.device]:
    """This process's world (from torchrun's environment `env`) and device; joins the process group if N > 1.
    Checks first that the recipe's global batch splits over the world, before anything is written."""
    world = world_from_env(env)
    check_batch_split(r.train, world.size)
    device_name, cfg = r.run.device, r.distributed
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda" and not torch.cuda.is_available():
        raise UsageError("run.device: 'cuda' requested but no CUDA device is available")
    if device_name == "cuda" and world.local_rank >= torch.cuda.device_count():
        raise UsageError(f"run.device: local rank {world.local_rank} but only {torch.cuda.device_count()} GPUs "
                         "on this node (torchrun --nproc-per-node must not exceed them)")
    device = device_for(world, device_name)
    if device.type == "cpu":
        # Bitwise reproducibility (and so exact resume) on CPU: without this, torch.compile lowers the
        # embedding backward (a scatter-add) to parallel atomic adds, whose order varies run to run.
        deterministic_kernels(compiled=r.train.compile)
    if r.train.threads:
        torch.set_num_threads(r.train.threads)
    init(world, device, cfg)
    return world, device
