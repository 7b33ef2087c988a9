"""A CUDA probe that costs a failed ``dlopen`` on every optimizer step, switched off where it
cannot succeed.

``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (to ask NVML, not the CUDA
runtime, whether a GPU is there before forking). ``torch.optim`` optimizers call
``torch.accelerator.is_available()`` on every step. On a machine without the NVIDIA driver,
such as a CPU box running the CUDA wheel, that call tries ``CDLL("libnvidia-ml.so.1")``,
fails, and falls back to ``cudaGetDeviceCount`` every time. Adam's step on a small net took
425 us instead of 195 us (BENCHMARKS.md). Where NVML cannot be loaded, the fallback is the
whole answer anyway, so the variable changes nothing there but the cost."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML = "libnvidia-ml.so.1"


def nvml_loadable() -> bool:
    try:
        ctypes.CDLL(NVML)
    except OSError:
        return False
    return True


def skip_failing_nvml_probe() -> bool:
    """Unset the NVML-based check when NVML cannot be loaded; True if it was unset. A machine
    with the driver keeps Lightning's setting (and its fork safety) as it is."""
    if os.environ.get(VAR) != "1" or nvml_loadable():
        return False
    os.environ[VAR] = "0"
    log.debug("%s: %s not loadable, the per-step NVML probe is off", VAR, NVML)
    return True
