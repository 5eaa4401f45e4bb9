"""Linear layers through oneDNN when scoring in fp32 on a CPU.

PyTorch runs an fp32 `F.linear` on x86 through MKL's sgemm; for the shapes of scoring (tens of thousands of
positions times a model width) oneDNN's matmul — the kernel `torch.compile` uses for linear layers on a CPU,
exposed as `torch.ops.mkldnn._linear_pointwise` — is ~10% faster over a whole HellaSwag run
(benchmarks/RESULTS.md). The numbers are fp32 matmuls either way; only the order of the sums may differ (last
bits). A function mode, so that the model, its wrappers and the in-loop benchmarks' gathered blocks stay as they are.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _OneDNNLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and not kwargs.keys() - {"bias"}:  # as nn.Linear calls it
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu":
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return func(*args, **kwargs)


def cpu_linear(device: torch.device, dtype: torch.dtype):
    """The context that scoring runs in: oneDNN's linear for fp32 on a CPU that has it, else nothing."""
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        return _OneDNNLinear()
    return contextlib.nullcontext()
