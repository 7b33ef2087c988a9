"""Safe checkpoint loading: ``weights_only=True`` always, clear errors for every failure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import CheckpointError

log = logging.getLogger(__name__)


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (never runs code from the file).

    Raises:
        CheckpointError: missing, truncated/corrupt, or not a Lightning checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of disallowed globals, ...
        raise CheckpointError(
            f"checkpoint {p} cannot be read safely ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild an ``ImageClassifier`` from a checkpoint alone (net and data spec come from it).

    Raises:
        CheckpointError: unreadable file, or weights that do not fit the stored config (the
            message names each mismatched layer).
    """
    from imgcls.models.classifier import ImageClassifier

    ckpt = load_checkpoint_dict(path)
    hparams = ckpt.get("hyper_parameters")
    if not hparams or "net" not in hparams or "spec" not in hparams:
        raise CheckpointError(f"{path} has no ImageClassifier hyper-parameters (net/spec)")
    model = ImageClassifier(**hparams)
    own = model.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in ckpt["state_dict"].items()
        if k in own and hasattr(v, "shape") and v.shape != own[k].shape
    ]
    missing = sorted(set(own) - set(ckpt["state_dict"]))
    unexpected = sorted(set(ckpt["state_dict"]) - set(own))
    if problems or missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model built from its config "
            f"(net={hparams['net'].get('_target_')}): "
            + "; ".join(
                problems
                + [f"missing {k}" for k in missing]
                + [f"unexpected {k}" for k in unexpected]
            )
        )
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model.to(map_location)
