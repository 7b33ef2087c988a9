"""Layers shared by the nets; sizes come from a dry run, never from literals."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imgcls.errors import ConfigError


def flat_features(body: nn.Module, in_channels: int, image_size: Sequence[int], net: str) -> int:
    """Features ``body`` makes of one image; ``ConfigError`` when the image is too small."""
    h, w = int(image_size[0]), int(image_size[1])
    out = _dry_run(body, in_channels, h, w)
    if out is None:
        fits = next((s for s in (16, 28, 32, 64, 128, 224) if s > min(h, w)
                     and _dry_run(body, in_channels, s, s) is not None), None)  # fmt: skip
        larger = f"data.image_size=[{fits},{fits}]" if fits else "larger images"
        raise ConfigError(
            f"{net}: input {in_channels}x{h}x{w} is too small for this net: resize the images "
            f"({larger}) or choose a net without this limit (model=mlp)"
        )
    return int(out[0].numel())


def _dry_run(body: nn.Module, in_channels: int, h: int, w: int) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            was_training = body.training
            body.eval()  # BatchNorm would complain about a batch of one in train mode
            out = body(torch.zeros(1, in_channels, h, w))
            body.train(was_training)
    except RuntimeError:
        return None
    return out


def mlp_head(
    num_features: int, hidden: Sequence[int], dropout: float, num_classes: int
) -> nn.Sequential:
    """``Linear-ReLU`` per hidden size, then ``Dropout`` (when > 0), then the output ``Linear``."""
    layers: list[nn.Module] = []
    n = int(num_features)
    for h in hidden:
        layers += [nn.Linear(n, int(h)), nn.ReLU(inplace=True)]
        n = int(h)
    if dropout > 0:
        layers.append(nn.Dropout(float(dropout)))
    layers.append(nn.Linear(n, num_classes))
    return nn.Sequential(*layers)
