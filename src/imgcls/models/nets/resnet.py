"""A torchvision ResNet backbone (``fc`` removed) and a trainable MLP head (``BackboneHead``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models import get_model

from imgcls.errors import ConfigError, WeightsError
from imgcls.models.nets._backbone import BackboneHead
from imgcls.models.nets._weights import Weights, torchvision_weights

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class ResNetMLP(BackboneHead):
    """``backbone`` (torchvision ResNet minus ``fc``) -> ``head`` (MLP).

    ``in_channels`` 1 is repeated to RGB; any image size works (global average pooling). For
    ``weights`` see ``imgcls.models.nets._weights`` (``None``: random init, as a checkpoint rebuilds
    the net before loading its own weights). ``freeze=None``: frozen when pretrained."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int] | None = None,
        arch: str = "resnet152",
        weights: str | os.PathLike | None = None,
        hidden: Sequence[int] = (1600, 1024),
        dropout: float = 0.1,
        freeze: bool | None = True,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"model.net.arch={arch!r}: choose one of {', '.join(ARCHS)}")
        if in_channels not in (1, 3):
            raise ConfigError(
                f"{arch}: in_channels must be 1 (repeated to RGB) or 3, got {in_channels}"
            )
        self.arch, self.in_channels = arch, int(in_channels)
        # get_model(weights=<enum>) would torch.load the file with weights_only=False: we load it
        resnet = get_model(arch, weights=None)
        pretrained = torchvision_weights(arch, weights)
        if pretrained is not None:
            _load_backbone(resnet, pretrained, arch)
            log.info("%s: backbone weights %s (%s)", arch, pretrained.name, pretrained.path)
        self.num_features = int(resnet.fc.in_features)
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self._init_head(num_classes, hidden, dropout, freeze, pretrained is not None)

    @classmethod
    def resolve_weights(cls, weights: Any, arch: str = "resnet152", **_: Any) -> Weights | None:
        return torchvision_weights(arch, weights)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # the repeat loses the memory format; use the one the backbone's weights are in
        w = cast(nn.Conv2d, self.backbone.conv1).weight
        nhwc = w.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        return self.backbone(x.contiguous(memory_format=fmt))


FrozenResNet = ResNetMLP  # checkpoints written before the rename name it


def _load_backbone(resnet: nn.Module, pretrained: Weights, arch: str) -> None:
    """Load a ResNet state dict strictly, its ``fc`` ignored (the head replaces it)."""
    sd = {k.removeprefix("module."): v for k, v in pretrained.state_dict().items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    wrong = [k for k in sorted(own.keys() & sd.keys()) if own[k].shape != sd[k].shape]
    problems = {
        "missing": sorted(own.keys() - sd.keys()),
        "unexpected": sorted(sd.keys() - own.keys()),
        "wrong shape": wrong,
    }
    if any(problems.values()):
        parts = [f"{kind} {', '.join(keys[:3])}" for kind, keys in problems.items() if keys]
        raise WeightsError(
            f"weights file {pretrained.path} does not fit {arch}: " + "; ".join(parts)
        )
    resnet.load_state_dict(sd, strict=False)
