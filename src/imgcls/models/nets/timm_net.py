"""Any timm model as a backbone by name (``model=timm model.net.name=<timm model>``): the
classifier-less ``timm.create_model(name, num_classes=0, in_chans=<data channels>)`` under a
``BackboneHead``. Grayscale data gets a 1-channel stem (timm sums the pretrained RGB filters,
the same as repeating the gray channel)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from torch import nn

from imgcls.errors import WeightsError
from imgcls.models.nets._backbone import BackboneHead
from imgcls.models.nets._timm_weights import check_name, import_timm, timm_weights
from imgcls.models.nets._weights import Weights

log = logging.getLogger(__name__)


class TimmNet(BackboneHead):
    """``backbone`` (a timm model without its classifier) -> ``head`` (MLP).

    Args:
        image_size: passed as ``img_size`` to fixed-size models (ViTs).
        name: a timm model name, e.g. ``resnet18``, ``convnext_atto``, ``resnet18.a1_in1k``.
        weights: ``DEFAULT`` | a pretrained tag | a local file | ``None`` (random init; a
            checkpoint rebuilds the net so and loads its own weights).
        hidden / dropout / freeze: as for ``FrozenResNet``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        name: str = "resnet18",
        weights: str | os.PathLike | None = None,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        freeze: bool | None = True,
    ) -> None:
        super().__init__()
        check_name(name)
        self.arch, self.in_channels = name, int(in_channels)
        pretrained = timm_weights(name, weights)
        self.backbone = _create(name, pretrained, self.in_channels, image_size)
        self.num_features = int(cast(int, self.backbone.num_features))
        self._init_head(num_classes, hidden, dropout, freeze, pretrained is not None)

    @classmethod
    def resolve_weights(cls, weights: Any, name: str = "resnet18", **_: Any) -> Weights | None:
        return timm_weights(name, weights)


def _create(
    name: str, pretrained: Weights | None, in_chans: int, image_size: Sequence[int]
) -> nn.Module:
    """``timm.create_model`` without a classifier; pretrained only from a local file."""
    timm = import_timm()
    from timm.models import get_pretrained_cfg

    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:  # position embeddings sized for the data
        kwargs["img_size"] = tuple(int(s) for s in image_size)
    if pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    pretrained.check_available()
    where = str(pretrained.path)
    with _load_report() as report:
        try:
            model = timm.create_model(
                pretrained.name,
                pretrained=True,
                pretrained_cfg_overlay={"file": where},
                **kwargs,
            )
        except Exception as e:  # not a weights file, wrong shapes, pickled code, ...
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise WeightsError(f"weights file {where} does not fit {name}: {msg}") from None
    if report:
        raise WeightsError(f"weights file {where} does not fit {name}: {'; '.join(report)}")
    log.info("%s: backbone weights %s (%s)", name, pretrained.name, where)
    return model


@contextmanager
def _load_report() -> Iterator[list[str]]:
    """timm loads pretrained weights non-strictly and only logs keys that did not fit; collect
    those messages so a file of another model is an error, not a half-loaded backbone."""
    logger = logging.getLogger("timm.models._builder")
    out: list[str] = []

    def collect(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(("Missing keys", "Unexpected keys")):
            kind, _, keys = text.partition(" (")
            names = keys.split(")")[0].split(", ")
            more = f", ... {len(names)} in all" if len(names) > 3 else ""
            out.append(f"{kind.lower()} {', '.join(names[:3])}{more}")
        return True

    level = logger.level
    logger.addFilter(collect)
    logger.setLevel(logging.INFO)  # the messages are INFO
    try:
        yield out
    finally:
        logger.removeFilter(collect)
        logger.setLevel(level)


__all__ = ["TimmNet"]
