"""Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"): momentum, then the update
orthogonalised by a Newton–Schulz iteration, for weight matrices.

The algorithm is `torch.optim.Muon`'s, step for step (momentum by `lerp`, Nesterov, Keller Jordan's quintic
coefficients, the "original" shape adjustment √max(1, fan_out/fan_in), decoupled weight decay scaled by the
learning rate); with `ns_dtype=torch.bfloat16` an update is bitwise torch's (a test holds it). Written here because
torch's cannot serve three things a run needs: it orthogonalises in bf16 always (emulated, and slow, on CPUs
without bf16 and 1e-2 off the fp32 math an fp32 run asks for), it refuses the MoE experts' (E, in, out) stacks of
matrices, and under FSDP2 it would orthogonalise each rank's shard of a matrix instead of the matrix. Here a
sharded parameter's update is gathered, orthogonalised whole (on every rank alike) and each rank keeps its own
shard — the gather, not torchtitan's and OLMo-core's whole-matrix-per-rank assignment: simpler, and bitwise the
same update on every rank, at the price of every rank doing all the Newton–Schulz work, 5·(4m²n + 2m³) FLOPs per
m×n matrix (m ≤ n): 1.3e14 per step at recipes/3b.toml's shapes, a fifth of a rank's share of the step on 64 ranks
(docs/design.md, "Optimizers")."""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults, from Keller Jordan's reference
NS_STEPS = 5
EPS = 1e-7


def orthogonalize(g: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS, eps: float = EPS) -> torch.Tensor:
    """≈ U·Vᵀ of g = U·S·Vᵀ by the quintic Newton–Schulz iteration, in `dtype`; a 3-D tensor is a stack of
    matrices, each orthogonalised on its own."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    stacked = x.ndim == 3
    x = x / (x.norm(dim=(-2, -1), keepdim=True) if stacked else x.norm()).clamp(min=eps)  # spectral norm <= 1
    add_mm = torch.baddbmm if stacked else torch.addmm
    for _ in range(steps):
        gram = x @ x.mT
        x = add_mm(x, add_mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def shape_scale(p: torch.Tensor) -> float:
    """√max(1, fan_out/fan_in): equal update RMS across rectangular matrices. A Linear weight is (out, in); an
    expert stack is (E, in, out), used as x @ w."""
    fan_out, fan_in = (p.shape[-1], p.shape[-2]) if p.ndim == 3 else (p.shape[0], p.shape[1])
    return math.sqrt(max(1.0, fan_out / fan_in))


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_dtype: torch.dtype,
                 nesterov: bool = True):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "nesterov": nesterov})
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(f"Muon takes matrices and stacks of matrices; got a parameter of shape "
                                     f"{tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                p.mul_(1 - lr * wd)
                p.add_(self._orthogonal(update), alpha=-lr * shape_scale(p))

    def _orthogonal(self, update: torch.Tensor) -> torch.Tensor:
        if not isinstance(update, DTensor):
            return orthogonalize(update, self.ns_dtype)
        # FSDP2: the whole matrix on every rank, then this rank's shard of the result (no communication)
        whole = orthogonalize(update.full_tensor(), self.ns_dtype)
        return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)
