"""Read a safetensors file one tensor at a time with plain reads.

The safetensors library memory-maps the whole file, and every page a load touches stays in the process's resident
set until the file is closed: loading a model through it costs the model twice over (the copy and the mapped file).
The format is a little-endian u64 header length, a JSON header ({name: dtype, shape, data_offsets}) and the data;
reading each tensor straight into its own buffer keeps memory to the model itself."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import torch

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
_MAX_HEADER = 100 << 20  # the library's own limit


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in file order; ValueError for a file that is not a well-formed safetensors file."""
    with open(path, "rb") as f:
        size = f.read(8)
        if len(size) != 8 or not 0 < (n := struct.unpack("<Q", size)[0]) <= _MAX_HEADER:
            raise ValueError("not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
        base = 8 + n
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for name, info in entries:
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{name}: dtype {info['dtype']} is not a weight dtype tst reads")
            t = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end - begin != t.numel() * t.element_size():
                raise ValueError(f"{name}: {end - begin} bytes for shape {info['shape']} {info['dtype']}")
            f.seek(base + begin)
            if t.numel() and f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise ValueError(f"{name}: the file ends inside its data (truncated)")
            yield name, t
