"""The loss of the output head, from the final hidden states `h` (N, d) and the head matrix `W` (V, d), without
materialising the (N, V) logits: `loss = mean_i ℓ(h_i·Wᵀ, T_i)` for the per-position losses of loss.py.

How: the positions are cut into chunks of `chunk_size`; for each chunk the forward pass computes its logits (in
the compute dtype, like the head's matmul under autocast), the chunk's loss in fp32, and — when a gradient is
wanted — the loss's analytic gradient with respect to those logits, which it turns at once into the chunk's share
of dL/dh and dL/dW (accumulated in fp32). Only one chunk's logits and their gradient exist at any time; what
survives to the backward pass is dL/dh (N, d) and dL/dW (V, d), the sizes of h and W. The backward pass only
scales them by the incoming gradient, in place, so a forward serves one backward (no `retain_graph` reuse).

Why gradients in the forward pass rather than recomputation in the backward: recomputing the logits costs a
fourth (N·V·d) matmul per step, a tenth or more of a small model's step at V = 128k, and the step-time target is
parity with the full-logits path; keeping the gradients costs one head-sized fp32 buffer. Without a gradient
(evaluation, held-out loss) nothing but the loss is computed.

Why not torch's `F.linear_cross_entropy(options=...)`: it scores one target per position (the multi-hot CE would
need m extra gathered dot products ⟨h, W[T_j]⟩, an (N, m, d) gather: 800 MB at N = 8,192, m = 16, d = 3,072),
it has no BCE or hinge, and it breaks a compiled graph at the op; this function is traced whole by torch.compile.

`chunk_size = 0` is the reference: the full logits and torch's own functions (loss.reference_loss), which the
tests hold the chunked path to.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tstcli.phases import PhasePlan
from tstcli.recipe import TstConfig
from tstcli.tst.loss import at_least_fp32, chunk_loss, reference_loss, target_weights


@dataclass(frozen=True)
class LossSpec:
    """How one phase's positions are scored: which loss, its per-target weights (None: uniform), and how many
    positions' logits exist at once (0: all, the full-logits reference)."""
    kind: str = "mce"
    weights: torch.Tensor | None = None
    chunk_size: int = 0


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, head, targets, weights, kind: str, chunk: int, dtype: torch.dtype, keep):
        n = hidden.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w_c = head.to(dtype)
        total = at_least_fp32(torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = at_least_fp32(torch.zeros_like(head)) if want_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk):
                h_c = hidden[start:start + chunk].to(dtype)
                loss, dz = chunk_loss(kind, at_least_fp32(F.linear(h_c, w_c)), targets[start:start + chunk], weights,
                                      with_grad=want_h or want_w)
                if keep is not None:  # unscored positions: no loss, no gradient (the mean is still over all)
                    k_c = keep[start:start + chunk].to(loss.dtype)
                    loss = loss * k_c
                    dz = None if dz is None else dz.mul_(k_c[:, None])
                total = total + loss.sum()
                if dz is None:
                    continue
                dz = dz.to(dtype)  # the mean's 1/n is applied to the (small) products, not to dz
                if want_h:
                    grad_h[start:start + chunk] = (dz @ w_c).div_(n)
                if want_w:  # (h/n) rounded once from the input's precision; add_'s alpha is lost under compile
                    grad_w += dz.T @ (hidden[start:start + chunk] / n).to(dtype)
                del dz  # before the next chunk's logits exist: one chunk-sized buffer at a time
        ctx.save_for_backward(grad_h, grad_w)
        ctx.head_dtype = head.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        # Scaled in place: a head-sized copy here would cost what the chunking saved (1.5 GB at the 3B recipe). So
        # the saved gradients serve one backward pass (as for torch's chunked linear_cross_entropy).
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else grad_h.mul_(grad_out.to(grad_h.dtype))
        gw = None if grad_w is None else grad_w.mul_(grad_out).to(ctx.head_dtype)
        return gh, gw, None, None, None, None, None, None


def head_loss(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, spec: LossSpec,
              scored: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over positions. hidden (..., d), head (V, d), targets (..., m) int64; `scored` (...) bool: the
    positions in the loss (None: all), the others counting 0 in the mean over all. Under autocast the head's
    matmul runs in the autocast dtype, as `nn.Linear` would; the loss itself is always taken in fp32."""
    if spec.chunk_size == 0:
        return reference_loss(spec.kind, F.linear(hidden, head), targets, spec.weights, scored)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.dtype
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1, targets.shape[-1])
    keep = None if scored is None else scored.reshape(-1)
    return _ChunkedHeadLoss.apply(h, head, t, spec.weights, spec.kind, spec.chunk_size, dtype, keep)


def loss_specs(plan: PhasePlan, tst: TstConfig, chunk_size: int) -> dict[int, LossSpec]:
    """How each phase is scored: phase 1 by the recipe's loss and weights over its targets, phase 2 by plain
    cross-entropy."""
    m = plan.phase1.target_width
    return {1: LossSpec(tst.loss, target_weights(m, tst.weighting, tst.alpha), chunk_size),
            2: LossSpec("mce", None, chunk_size)}
