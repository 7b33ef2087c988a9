"""Batch transforms on tensors: uint8 -> normalized float, and per-sample random affine.

They run once the batch is on its device (``on_after_batch_transfer``), so augmentation uses the
GPU when there is one and the host only ever moves uint8 pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x / 255 - mean) / std`` per channel as one multiply and one subtract (every batch
    runs it; one channel uses Python scalars); the caller's tensor is left untouched."""
    x = images.float()
    mul = x.mul if x is images else x.mul_  # float32 input: the first op makes the copy
    scale = [1.0 / (255.0 * s) for s in std]
    shift = [m / s for m, s in zip(mean, std, strict=True)]
    if len(scale) == 1:
        return mul(scale[0]).sub_(shift[0])
    view = (1, -1, 1, 1)
    a = torch.tensor(scale, dtype=x.dtype, device=x.device).view(view)
    b = torch.tensor(shift, dtype=x.dtype, device=x.device).view(view)
    return mul(a).sub_(b)


class BatchRandomAffine(nn.Module):
    """Random rotation/translation/scale/shear (x axis, degrees) and h-flip, drawn per sample.

    One ``affine_grid`` + ``grid_sample`` for the batch, where torchvision's batch transforms
    share one draw. Borders are filled with 0, black in pixel space (torchvision's fill)."""

    def __init__(
        self,
        degrees: float = 0.0,
        translate: Sequence[float] = (0.0, 0.0),
        scale: Sequence[float] = (1.0, 1.0),
        shear: float = 0.0,
        hflip: float = 0.0,
    ) -> None:
        super().__init__()
        self.degrees = float(degrees)
        self.translate = (float(translate[0]), float(translate[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.shear = float(shear)
        self.hflip = float(hflip)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        dev, dt = x.device, x.dtype

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.empty(n, device=dev, dtype=dt).uniform_(lo, hi)

        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        shear = uniform(-self.shear, self.shear) * (math.pi / 180)
        zoom = uniform(*self.scale)
        # affine_grid maps output coords to input coords, so invert the zoom.
        inv = 1.0 / zoom
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        theta = torch.zeros(n, 2, 3, device=dev, dtype=dt)
        theta[:, 0, 0] = cos * inv
        theta[:, 0, 1] = (-sin + cos * tan) * inv
        theta[:, 1, 0] = sin * inv
        theta[:, 1, 1] = (cos + sin * tan) * inv
        theta[:, 0, 2] = uniform(-self.translate[0], self.translate[0]) * 2
        theta[:, 1, 2] = uniform(-self.translate[1], self.translate[1]) * 2
        if self.hflip > 0:
            flip = torch.rand(n, device=dev) < self.hflip
            theta[flip, :, 0] = -theta[flip, :, 0]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"shear={self.shear}, hflip={self.hflip}"
        )
