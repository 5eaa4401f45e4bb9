"""Where a loaded model runs and in what precision (`tst eval`, `tst sample`: `--device`, `--dtype`).

`auto` means the GPU when there is one, and bf16 there (the weights themselves in bf16: half the memory, the
tensor cores' format); on the CPU fp32, the numbers `tst eval` has always given (lm-eval parity)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tstcli.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return next(name for name, d in DTYPES.items() if d == self.dtype)

    def describe(self) -> dict:
        """The JSON fields recording it."""
        return {"device": self.device.type, "dtype": self.dtype_name}


CPU_FP32 = Placement(torch.device("cpu"), torch.float32)


def resolve(device: str = "auto", dtype: str = "auto", local_rank: int | None = None) -> Placement:
    """The placement `--device` and `--dtype` ask for (under torchrun, the GPU of this process's `local_rank`); a
    GPU asked for on a machine without one is a usage error."""
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of auto, {', '.join(DTYPES)}")
    has_gpu = torch.cuda.is_available()
    if device == "cuda" and not has_gpu:
        raise UsageError("--device cuda: no CUDA GPU is visible to this process (torch.cuda.is_available() is "
                         "False); use --device cpu")
    where = torch.device("cpu")
    if device == "cuda" or (device == "auto" and has_gpu):
        where = torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)
    if dtype == "auto":
        dtype = "bf16" if where.type == "cuda" else "fp32"
    return Placement(where, DTYPES[dtype])
