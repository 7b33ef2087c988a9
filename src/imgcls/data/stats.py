"""Per-channel mean/std of uint8 images, for sources whose normalization is not given."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def measure_mean_std(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of ``(N, C, H, W)`` uint8 scaled to [0, 1]: exact integer sums over chunks
    of ~16 M pixels, so a large (memory-mapped) dataset is never copied to float."""
    n, c = images.shape[:2]
    chunk = max(1, (1 << 24) // max(1, images[0].numel())) if n else 1
    s = torch.zeros(c, dtype=torch.int64)
    s2 = torch.zeros(c, dtype=torch.int64)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].to(torch.int32)
        s += x.sum(dim=(0, 2, 3), dtype=torch.int64)
        s2 += x.square().sum(dim=(0, 2, 3), dtype=torch.int64)
    count = max(1, images.numel() // c)
    mean = s.double() / count / 255.0
    std = (s2.double() / count / 255.0**2 - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(max(float(v), 1e-3) for v in std)


def log_mean_std(mean: tuple[float, ...], std: tuple[float, ...], on: str) -> None:
    msg = "normalization: mean %s, std %s measured on %s (set data.mean/std to fix them)"
    log.info(msg, tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std), on)
