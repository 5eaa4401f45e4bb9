"""Peak matmul throughput per device, the denominator of MFU (model FLOPs utilisation).

GPUs: dense (no sparsity) tensor-core peaks from the vendors' data sheets, bf16 and plain fp32 (PyTorch does not
use TF32 for fp32 matmuls by default). A device not in the table reports MFU as unknown rather than a guess. CPUs
have no data-sheet figure that means anything here, so the peak is measured at start-up: the best rate of a large
matmul in the compute dtype on the threads torch uses.
"""
from __future__ import annotations

import functools
import time

import torch

# (substring of torch.cuda.get_device_name(), bf16 FLOP/s, fp32 FLOP/s or None); the first match wins, so a
# variant (PCIe, NVL: lower clocks and power) comes before its family's SXM figure.
GPU_PEAKS = (
    ("H100 PCIe", 756e12, 51e12),
    ("H100 NVL", 835e12, 60e12),
    ("H200 NVL", 835e12, 60e12),
    ("H100", 989e12, 67e12),
    ("H200", 989e12, 67e12),
    ("H20", 148e12, 44e12),
    ("A100", 312e12, 19.5e12),
    ("B200", 2250e12, None),
)


@functools.lru_cache(maxsize=None)  # once per process and dtype
def measure_cpu_peak(dtype: torch.dtype, seconds: float = 0.25, n: int = 1024) -> float:
    """The best rate of `torch.mm` and of `F.linear` (the op the model's layers run) in `dtype`: the two take
    different kernels, and in bf16 on a CPU without bf16 units `linear` ran ~2x `mm`, so an `mm`-only peak put
    MFU at ~200%."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = 0.0
    for op in (torch.mm, torch.nn.functional.linear):
        op(a, b)  # warm-up
        t_end = time.perf_counter() + seconds / 2
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            op(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX; Linux's /proc/cpuinfo flags). Without
    them PyTorch's bf16 matmuls run ~23x slower than fp32 (measured on an AVX2-only EPYC)."""
    if cpuinfo is None:
        if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):  # kernels held below AVX-512
            return False                                                     # (ATEN_CPU_CAPABILITY=avx2)
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def resolve_dtype(r, device: torch.device, log=None):
    """The recipe with `train.dtype = "auto"` made concrete for `device` (a run's recipe records what it used, so a
    resume computes exactly as before); an explicit bf16 where it is emulated gets one warning through `log`."""
    import dataclasses

    if r.train.dtype == "auto":
        chosen = "bf16" if native_bf16(device) else "fp32"
        return dataclasses.replace(r, train=dataclasses.replace(r.train, dtype=chosen))
    if r.train.dtype == "bf16" and device.type == "cpu" and not cpu_has_bf16() and log is not None:
        log("warning: train.dtype = \"bf16\" on a CPU without bf16 units (AVX512-BF16 or AMX): its matmuls are "
            "emulated, ~23x slower than fp32; \"auto\" or \"fp32\" would use fp32")
    return r


def peak_flops(device: torch.device, bf16: bool) -> tuple[str, float | None]:
    """(device name, peak FLOP/s or None when unknown)."""
    if device.type == "cpu":
        return "cpu (peak measured at start-up)", measure_cpu_peak(torch.bfloat16 if bf16 else torch.float32)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, p_bf16, p_fp32 in GPU_PEAKS:
            if key in name:
                return name, p_bf16 if bf16 else p_fp32
        return name, None
    return device.type, None
