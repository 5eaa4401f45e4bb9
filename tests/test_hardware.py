"""The peak FLOP/s that MFU divides by (tstcli/train/hardware.py)."""
import pytest
import torch


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 NVL", 835e12),
                                       ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                                       ("NVIDIA H200 NVL", 835e12), ("NVIDIA GeForce RTX 4090", None)])
def test_mfu_divides_by_the_peak_of_the_exact_gpu_variant(monkeypatch, name, peak):
    """NVL and PCIe boards run lower clocks than SXM: their own data-sheet peak, not the family's (MFU would read
    low); an unknown GPU has no peak (MFU unknown, not a guess)."""
    from tstcli.train.hardware import peak_flops
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda", 0), bf16=True) == (name, peak)
