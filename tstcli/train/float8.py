"""Optional float8 training of the transformer blocks' linear layers through torchao (`train.float8`, issue #19).

Float8 matmuls (`torch._scaled_mm`) exist on NVIDIA GPUs of compute capability 8.9 and newer (Ada, Hopper,
Blackwell), and torchao is an extra (`pip install 'tst[float8]'`), so `check` refuses anything else with one line
before any work starts. `convert` swaps the blocks' `nn.Linear` layers for torchao's `Float8Linear` with dynamic
tensorwise scaling (torchao's default recipe, the one torchtitan uses with FSDP2): inputs, weights and output
gradients are cast to float8 inside each matmul, while the weights, gradients and optimizer state stay in their
own dtype. `Float8Linear` subclasses `nn.Linear` and keeps the `weight` parameter, so state-dict names, and with
them checkpoints and exports, are the same with float8 on or off.

Kept out of float8, because their precision matters more than their share of the FLOPs:
- the LM head (`output`) and the embedding (`tok_embeddings`): the chunked loss applies the head's matrix itself,
  and TST averages `s` embedding rows per position in fp32; neither goes through an `nn.Linear` call of a block;
- a mixture of experts' router (its logits choose the experts) and its routed experts, which are 3-D parameters
  multiplied by a grouped matmul, not `nn.Linear` layers (a shared expert's SwiGLU is converted);
- any linear whose dimensions are not multiples of 16, which `torch._scaled_mm` cannot take.

Order: convert the model after it is on its device and before activation checkpointing, `torch.compile` and
FSDP2 are applied (torchtitan's order); compile is what makes float8 fast (it fuses the amax and cast kernels).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from tstcli.errors import UsageError

MIN_CAPABILITY = (8, 9)  # the first CUDA architecture with float8 tensor cores (Ada: L4, L40; then H100, B200)
INSTALL = "pip install 'tst[float8]'"
_KEPT_HIGH_PRECISION = ("router",)  # module names inside a block that stay in bf16/fp32


def _refuse(reason: str) -> UsageError:
    return UsageError(f"train.float8: {reason}")


# torchao logs a warning for each optional C++ kernel library it cannot load (mxfp8, CUTLASS builds for other
# torch versions), and newer torch warns about how torchao registers an enum with torch.compile: tensorwise float8
# training needs none of those kernels and the user can act on neither, so they would only be noise on every run.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_torchao():
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _import_float8():
    """torchao.float8, or None with the reason in one line (a version mismatch can raise more than ImportError)."""
    try:
        with _quiet_torchao():
            import torchao.float8 as float8
        return float8, ""
    except Exception as e:  # noqa: BLE001 - any failure to import means float8 cannot run here
        first = (str(e).strip().splitlines() or [""])[0]
        return None, f"{type(e).__name__}: {first}" if first else type(e).__name__


def check(device: torch.device) -> None:
    """Raise `UsageError` (exit 2) with one line starting `train.float8: ` when float8 training cannot run on
    `device`: not a CUDA device, a GPU older than compute capability 8.9, or torchao missing."""
    device = torch.device(device)
    if device.type != "cuda":
        raise _refuse(f"float8 matmuls need an NVIDIA GPU of compute capability {_cc(MIN_CAPABILITY)} or newer "
                      f"(L4/L40, H100/H200, B200); this run's device is {device.type}")
    if not torch.cuda.is_available():
        raise _refuse("float8 matmuls need a CUDA GPU and torch sees none (torch.cuda.is_available() is False)")
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise _refuse(f"{name} has compute capability {_cc(capability)}; float8 matmuls need "
                      f"{_cc(MIN_CAPABILITY)} or newer (L4/L40, H100/H200, B200)")
    module, reason = _import_float8()
    if module is None:
        raise _refuse(f"torchao cannot be imported ({reason}); {INSTALL}")


def _cc(capability) -> str:
    return f"{capability[0]}.{capability[1]}"


def _matmul_aligned(linear: nn.Linear) -> bool:
    out_features, in_features = linear.weight.shape
    return out_features % 16 == 0 and in_features % 16 == 0


def float8_linear_names(model: nn.Module) -> list[str]:
    """Fully qualified names (as `model.named_modules()` gives them) of the linear layers `convert` swaps: every
    `nn.Linear` inside `model.layers` (attention wq/wk/wv/wo, the SwiGLU w1/w2/w3, a shared expert's) whose
    dimensions are multiples of 16, except a router. Pure: needs no torchao and changes nothing."""
    names = []
    for sub, module in model.layers.named_modules(prefix="layers"):
        if not isinstance(module, nn.Linear):
            continue
        if sub.rsplit(".", 1)[-1] in _KEPT_HIGH_PRECISION or not _matmul_aligned(module):
            continue
        names.append(sub)
    return names


def module_filter(names: list[str]):
    """torchao's `module_filter_fn(module, fqn) -> bool` that accepts exactly `names`."""
    chosen = frozenset(names)
    return lambda module, fqn: fqn in chosen


def convert(model: nn.Module) -> list[str]:
    """Swap the blocks' linear layers of `model` (a `tstcli.model.Llama`) for torchao float8 training linears in
    place; returns the converted names. Call `check` first. (FSDP2's float8 all-gather is left off: it needs the
    scales precomputed after every optimizer step, a further hook, for traffic that matters only across nodes.)"""
    float8, reason = _import_float8()
    if float8 is None:
        raise _refuse(f"torchao cannot be imported ({reason}); {INSTALL}")
    from torchao.float8.float8_linear import Float8Linear

    already = {name for name, m in model.named_modules() if isinstance(m, Float8Linear)}
    names = [n for n in float8_linear_names(model) if n not in already]  # converting twice would re-wrap
    float8.convert_to_float8_training(model, config=float8.Float8LinearConfig(), module_filter_fn=module_filter(names))
    return names
