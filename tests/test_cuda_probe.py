"""The per-step NVML probe Lightning's import turns on is off where NVML cannot load."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from imgcls.builder import build_trainer
from imgcls.utils import cuda_probe


def _cdll_calls_in_steps(monkeypatch: pytest.MonkeyPatch, steps: int = 3) -> int:
    """How many ``ctypes.CDLL`` loads ``steps`` Adam steps make."""
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(8, 4)).sum().backward()
    calls: list[object] = []
    real = ctypes.CDLL

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", counting)
    for _ in range(steps):
        opt.step()
    monkeypatch.setattr(ctypes, "CDLL", real)
    return len(calls)


@pytest.mark.skipif(cuda_probe.nvml_loadable(), reason="NVML loads here: the probe is kept")
def test_optimizer_steps_load_no_library_after_build_trainer(make_cfg, monkeypatch) -> None:
    monkeypatch.setenv(cuda_probe.VAR, "1")  # as `import lightning` sets it
    if torch.cuda._is_compiled():  # CUDA wheel: with the variable, every step tries NVML
        assert _cdll_calls_in_steps(monkeypatch) >= 3
    build_trainer(make_cfg("train", ["callbacks=none", "logger=none"]))
    assert os.environ[cuda_probe.VAR] == "0"
    assert _cdll_calls_in_steps(monkeypatch) == 0
    assert torch.cuda.is_available() is False  # the answer did not change


def test_probe_is_kept_where_nvml_loads(monkeypatch) -> None:
    monkeypatch.setenv(cuda_probe.VAR, "1")
    monkeypatch.setattr(cuda_probe, "nvml_loadable", lambda: True)
    assert cuda_probe.skip_failing_nvml_probe() is False
    assert os.environ[cuda_probe.VAR] == "1"


def test_unset_variable_is_left_alone(monkeypatch) -> None:
    monkeypatch.delenv(cuda_probe.VAR, raising=False)
    assert cuda_probe.skip_failing_nvml_probe() is False
    assert cuda_probe.VAR not in os.environ
