"""The optimizers of a run and the update of a step: AdamW for every parameter, or Muon for the blocks' weight
matrices beside AdamW for the rest (`train.optimizer`); the update is applied only when the step's loss and
gradient norm are finite. Every parameter group carries its peak learning rate (`peak_lr`); the schedule
(`tstcli/schedule.py`) scales all of them by one factor."""
from __future__ import annotations

import torch

from tstcli.recipe import TrainConfig
from tstcli.train.muon import Muon

NOT_MUON = ("router",)  # matrices of the blocks that stay with AdamW: the MoE router picks experts, it is no layer


def route(model: torch.nn.Module, optimizer: str) -> dict[str, list[str]]:
    """Parameter names by group: `muon` (the blocks' weight matrices and expert stacks, under "muon"), `adamw`
    (other matrices, with weight decay: embeddings, head, the router) and `adamw_no_decay` (norm gains). Every
    parameter is in exactly one group."""
    groups: dict[str, list[str]] = {"muon": [], "adamw": [], "adamw_no_decay": []}
    for name, p in model.named_parameters():
        if p.ndim < 2:
            groups["adamw_no_decay"].append(name)
        elif optimizer == "muon" and name.startswith("layers.") and not any(x in name for x in NOT_MUON):
            groups["muon"].append(name)
        else:
            groups["adamw"].append(name)
    return groups


class Optimizers:
    """The run's optimizers over disjoint parameters, stepped together: what the loop, the phase switch and the
    checkpoint (`parts`: torch.distributed.checkpoint takes the list) see as one optimizer."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.parts for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for o in self.parts for p, s in o.state.items()}

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.parts]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, sd in zip(self.parts, states, strict=True):
            o.load_state_dict(sd)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)


def make_optimizer(model: torch.nn.Module, t: TrainConfig, fused: bool | None = None) -> Optimizers:
    """AdamW with decoupled weight decay on matrices only (not on norm gains), and under `train.optimizer = "muon"`
    Muon for the blocks' matrices. On a GPU the fused AdamW kernel: one launch per parameter group, and it skips a
    bad step on the device (`apply_update`). On a CPU torch's default implementation, whose numbers every CPU run
    (and its bitwise resume) was made with. `fused` overrides. Muon orthogonalises in bf16 where the parameters
    live on a GPU (as its authors do), in fp32 on the CPU."""
    params = dict(model.named_parameters())
    on_gpu = bool(params) and next(iter(params.values())).device.type == "cuda"
    if fused is None:
        fused = on_gpu
    names = route(model, t.optimizer)
    adamw = [{"params": [params[n] for n in names["adamw"]], "weight_decay": t.weight_decay,
              "peak_lr": t.lr},
             {"params": [params[n] for n in names["adamw_no_decay"]], "weight_decay": 0.0, "peak_lr": t.lr}]
    parts: list[torch.optim.Optimizer] = [torch.optim.AdamW(adamw, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                                                            fused=fused or None)]
    if names["muon"]:
        parts.append(Muon([{"params": [params[n] for n in names["muon"]], "peak_lr": t.muon_lr}], lr=t.muon_lr,
                          momentum=t.muon_momentum, weight_decay=t.muon_weight_decay,
                          ns_dtype=torch.bfloat16 if on_gpu else torch.float32))
    return Optimizers(parts)


def set_lr(optimizer: Optimizers, factor: float) -> None:
    """Every group at its peak learning rate times the schedule's `factor`."""
    for g in optimizer.param_groups:
        g["lr"] = g["peak_lr"] * factor


def apply_update(optimizer: Optimizers, ok: torch.Tensor) -> None:
    """The optimizer step if `ok` (a boolean scalar tensor) holds, else nothing at all: no moment, counter or
    weight changes. Fused AdamW decides on the device, as for a gradient scaler's overflow (`found_inf`: the kernel
    does nothing and the step counter is set back), so the host never waits for the GPU there. The other
    implementations read `ok` on the host, which costs nothing on a CPU (the device is the host); with Muon on a
    GPU that is one wait per step."""
    host_ok = None
    for o in optimizer.parts:
        if o.defaults.get("fused"):
            o.found_inf = (~ok).to(torch.float32)
            o.step()
            continue
        if host_ok is None:
            host_ok = bool(ok)
        if host_ok:
            o.step()
    optimizer.zero_grad(set_to_none=True)
