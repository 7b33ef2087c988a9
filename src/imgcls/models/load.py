"""A trained ``ImageClassifier`` from a checkpoint alone: net and data spec come from the file,
through the trust boundary (``imgcls.engine.checkpoints.load``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from imgcls.models.classifier import ImageClassifier, check_tta

log = logging.getLogger(__name__)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ImageClassifier:
    """The checkpoint's model in eval mode on ``map_location``."""
    return ImageClassifier.load_from_checkpoint(path).eval().to(map_location)


def use_tta(model: ImageClassifier, cfg: Mapping[str, Any]) -> ImageClassifier:
    """``cfg.tta`` (eval/predict) over the checkpoint's ``model.tta``; logs the one in use."""
    if cfg.get("tta") is not None:
        model.tta = check_tta(cfg["tta"])
    log.info("test-time augmentation: %s", model.tta or "none")
    return model
