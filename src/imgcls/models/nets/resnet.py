"""Transfer learning: a frozen torchvision ResNet backbone and a trainable MLP head.

Freezing, the head and the feature-only forward are ``BackboneHead``'s (shared with the
timm nets). The backbone is torchvision's ``resnet18`` ... ``resnet152`` without its ``fc`` layer. It is
frozen in one place (``freeze_backbone``): no gradients, and eval mode even while the module
trains, so BatchNorm running statistics never move. The head's input size is the backbone's
``fc.in_features``. The net also accepts backbone features (2-D input) and runs only the head,
which is how the feature cache trains without re-running the backbone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models import get_model

from imgcls.errors import ConfigError, WeightsError
from imgcls.models.nets._backbone import BackboneHead, gray_normalization
from imgcls.models.nets._weights import resolve_weights

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class FrozenResNet(BackboneHead):
    """``backbone`` (torchvision ResNet minus ``fc``) -> ``head`` (MLP).

    Args:
        in_channels: 1 (repeated to RGB) or 3.
        num_classes: output classes.
        image_size: input (height, width); any size works (global average pooling).
        arch: ``resnet18`` | ``resnet34`` | ``resnet50`` | ``resnet101`` | ``resnet152``.
        weights: initial backbone weights (see ``imgcls.models.nets._weights``); ``None`` for
            random init. A checkpoint rebuilds the net with ``None`` and loads its own weights.
        hidden: hidden layer sizes of the head (``Linear-ReLU`` each).
        dropout: dropout before the output layer (the seed's head layout).
        freeze: start with the backbone frozen (``unfreeze_backbone`` lifts it); ``None``:
            frozen when ``weights`` are given, the whole net trainable from random init.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
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
        self.arch = arch
        self.in_channels = int(in_channels)
        resnet = get_model(arch, weights=None)
        pretrained = resolve_weights(arch, weights)
        if pretrained is not None:
            _load_backbone(resnet, pretrained.state_dict(), str(pretrained.path), arch)
            log.info("%s: backbone weights %s (%s)", arch, pretrained.name, pretrained.path)
        self.num_features = int(resnet.fc.in_features)
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self._init_head(num_classes, hidden, dropout, freeze, pretrained is not None)

    # -- forward ------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(N, num_features)`` of normalized images ``(N, C, H, W)``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # the repeat loses the memory format; use the one the backbone's weights are in
        w = cast(nn.Conv2d, self.backbone.conv1).weight
        fmt = (
            torch.channels_last
            if w.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        return self.backbone(x.contiguous(memory_format=fmt))

    # -- what the builder and the feature cache ask the net class/instance ---------------------------
    @classmethod
    def check_weights(cls, weights: Any, arch: str = "resnet152", **_: Any) -> None:
        """Fail fast (before any data is decoded) when the pretrained file is missing."""
        pretrained = resolve_weights(arch, weights)
        if pretrained is not None:
            pretrained.check_available()

    @classmethod
    def input_normalization(
        cls, weights: Any, in_channels: int, arch: str = "resnet152", **_: Any
    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) the pretrained weights expect; ``None`` leaves the data's choice.

        Grayscale input is repeated to RGB after normalization, so it gets the channel average.
        """
        pretrained = resolve_weights(arch, weights)
        if pretrained is None:
            return None
        return gray_normalization(pretrained.mean, pretrained.std, in_channels)


def _load_backbone(resnet: nn.Module, state_dict: dict[str, Any], source: str, arch: str) -> None:
    """Load a torchvision ResNet state dict (its ``fc`` ignored: the head replaces it)."""
    sd = {
        k.removeprefix("module."): v
        for k, v in state_dict.items()
        if not k.removeprefix("module.").startswith("fc.")
    }
    own = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = [k for k in sorted(set(own) & set(sd)) if tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or wrong:
        parts = [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            f"wrong shape {', '.join(wrong[:3])}" if wrong else "",
        ]
        raise WeightsError(
            f"weights file {source} does not fit {arch}: " + "; ".join(p for p in parts if p)
        )
    resnet.load_state_dict(sd, strict=False)
