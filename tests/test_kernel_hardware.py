"""The `gpu` profile is picked only for a CUDA device the installed torch can run on (Kaggle's P100 is not one)."""

from __future__ import annotations

import torch
from competition.training.profiles import hardware_profile, load_profile

ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90"]  # a torch build like Kaggle's: no sm_60


def _device(monkeypatch, name, capability, archs=ARCHS, available=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))


def test_p100_under_a_torch_without_sm60_means_cpu_and_says_why(monkeypatch):
    _device(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    name, reason = hardware_profile()
    assert name == "cpu"
    assert reason == "CUDA device Tesla P100-PCIE-16GB (sm_60) is not supported by this torch build (sm_75..sm_90); using cpu"
    chosen = load_profile()
    assert chosen.name == "cpu" and "sm_60" in chosen.reason


def test_t4_is_a_gpu(monkeypatch):
    _device(monkeypatch, "Tesla T4", (7, 5))
    assert hardware_profile() == ("gpu", "CUDA device found (Tesla T4, sm_75)")
    assert load_profile().name == "gpu"


def test_a_device_served_by_ptx_is_a_gpu(monkeypatch):
    _device(monkeypatch, "NVIDIA H100", (9, 0), archs=["sm_80", "compute_90"])
    assert hardware_profile()[0] == "gpu"


def test_no_cuda_means_cpu(monkeypatch):
    _device(monkeypatch, "none", (0, 0), available=False)
    assert hardware_profile() == ("cpu", "no CUDA device found")


def test_a_newer_minor_of_a_built_major_is_a_gpu(monkeypatch):
    _device(monkeypatch, "NVIDIA L4", (8, 9), archs=["sm_75", "sm_80", "sm_90"])  # sm_80 binaries run on sm_89
    assert hardware_profile()[0] == "gpu"
