"""What every frozen-backbone net shares: ``backbone`` -> MLP ``head``, one freeze, one signature.

Subclasses build ``self.backbone`` (any ``nn.Module`` returning ``(N, num_features)``) and call
``_init_head``; freezing, BatchNorm handling, feature-only forward and the feature-cache
signature live here, so the ResNet and the timm nets behave identically.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


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


def gray_normalization(
    mean: Sequence[float], std: Sequence[float], in_channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The weights' (mean, std); grayscale input gets the channel average (it is repeated to RGB,
    or the first conv summed over RGB, after normalization)."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if in_channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std


class BackboneHead(nn.Module):
    """A frozen-or-trainable ``backbone`` and a trainable MLP ``head`` (see module docstring)."""

    arch: str
    in_channels: int
    num_features: int
    backbone: nn.Module
    head: nn.Module

    def _init_head(
        self,
        num_classes: int,
        hidden: Sequence[int],
        dropout: float,
        freeze: bool | None,
        pretrained: bool,
    ) -> None:
        """Build the head on ``self.num_features``; ``freeze=None``: frozen when pretrained."""
        self.head = mlp_head(self.num_features, hidden, dropout, num_classes)
        self.backbone_frozen = False
        self.backbone_bn_frozen = False
        if freeze if freeze is not None else pretrained:
            self.freeze_backbone()

    # -- freezing ------------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and eval mode for it from now on (BN stats fixed)."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone_bn_frozen = True
        self.train(self.training)

    def unfreeze_backbone(self, train_bn: bool = True) -> None:
        """Let the backbone train; with ``train_bn=False`` its BatchNorm layers stay frozen."""
        self.backbone.requires_grad_(True)
        self.backbone_frozen = False
        self.backbone_bn_frozen = not train_bn
        if not train_bn:
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> BackboneHead:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        elif self.backbone_bn_frozen:
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # -- forward ------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(N, num_features)`` of normalized images ``(N, C, H, W)``."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits from images ``(N, C, H, W)`` or from backbone features ``(N, num_features)``."""
        if x.ndim == 2:
            return self.head(x)
        return self.head(self.features(x))

    def feature_signature(self) -> dict[str, Any]:
        """What determines ``features(x)`` for a given ``x``: architecture, input channels and
        a digest of every backbone parameter and buffer (so random, pretrained and local
        weights are told apart by their values, not by how they were named)."""
        h = hashlib.sha256()
        for name, t in self.backbone.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no copy
        return {
            # part of the cache file name: no path separators from e.g. a timm name
            "arch": re.sub(r"[^A-Za-z0-9._-]", "_", self.arch),
            "in_channels": self.in_channels,
            "backbone_sha256": h.hexdigest(),
        }
