"""What every backbone net shares: ``backbone`` -> MLP ``head``, one freeze, one weights check,
one feature signature, so the ResNet and the timm nets behave identically."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgcls.models.nets._shapes import mlp_head
from imgcls.models.nets._weights import Weights


class BackboneHead(nn.Module):
    """A frozen-or-trainable ``backbone`` and a trainable MLP ``head``.

    Subclasses build ``self.backbone`` (returning ``(N, num_features)``), call ``_init_head`` and
    say where their weights are (``resolve_weights``)."""

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
        """``freeze=None``: frozen when pretrained."""
        self.head = mlp_head(self.num_features, hidden, dropout, num_classes)
        self.backbone_frozen = False
        self.backbone_bn_frozen = False
        if freeze if freeze is not None else pretrained:
            self.freeze_backbone()

    # -- what the builder asks the class before any data is decoded -----------------------------
    @classmethod
    def resolve_weights(cls, weights: Any, **net_cfg: Any) -> Weights | None:
        raise NotImplementedError

    @classmethod
    def check_weights(cls, weights: Any, **net_cfg: Any) -> None:
        """Fail fast when the weights file (or cache entry) is missing."""
        pretrained = cls.resolve_weights(weights, **net_cfg)
        if pretrained is not None:
            pretrained.check_available()

    @classmethod
    def input_normalization(
        cls, weights: Any, in_channels: int, **net_cfg: Any
    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) the weights expect, ``None`` leaves the data's. Grayscale gets the channel
        average (it is repeated to RGB, or the stem summed over RGB, after normalization)."""
        pretrained = cls.resolve_weights(weights, **net_cfg)
        if pretrained is None:
            return None
        mean, std = pretrained.mean, pretrained.std
        if in_channels == 1:
            return (sum(mean) / len(mean),), (sum(std) / len(std),)
        return tuple(map(float, mean)), tuple(map(float, std))

    def freeze_backbone(self) -> None:
        """No gradients, and eval mode from now on (BN statistics fixed)."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = self.backbone_bn_frozen = True
        self.train(self.training)

    def unfreeze_backbone(self, train_bn: bool = True) -> None:
        """With ``train_bn=False`` the BatchNorm layers stay frozen."""
        self.backbone.requires_grad_(True)
        self.backbone_frozen = False
        self.backbone_bn_frozen = not train_bn
        if not train_bn:
            for m in self._bn_layers():
                m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> BackboneHead:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        elif self.backbone_bn_frozen:
            for m in self._bn_layers():
                m.eval()
        return self

    def _bn_layers(self) -> Iterator[nn.Module]:
        return (m for m in self.backbone.modules() if isinstance(m, _BatchNorm))

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits from images, or from backbone features (2-D: how the feature cache trains)."""
        return self.head(x if x.ndim == 2 else self.features(x))

    def feature_signature(self) -> dict[str, Any]:
        """What determines ``features(x)``: a digest of the backbone's values (random, pretrained
        and local weights are told apart by value, not by name), arch and input channels."""
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
