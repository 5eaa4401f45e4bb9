"""A batch's way to the training device (the rows themselves come from `tstcli.data`)."""
from __future__ import annotations

import numpy as np
import torch


def to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch on the training device. On a GPU the copy goes through pinned memory: from pageable memory CUDA may
    wait for the stream before copying, which would make the host wait for the previous step every step."""
    t = torch.from_numpy(rows)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
