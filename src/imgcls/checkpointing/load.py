"""Safe checkpoint loading: ``weights_only=True`` always, clear errors for every failure."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import CheckpointError
from imgcls.models.compiled import plain_key

log = logging.getLogger(__name__)


def load_checkpoint_dict(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (never runs code from the file).

    ``mmap=True`` maps the tensors instead of reading them (cheap for picking a file).

    Raises:
        CheckpointError: missing, truncated/corrupt, or not a Lightning checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, pickle of disallowed globals, ...
        raise CheckpointError(
            f"checkpoint {p} cannot be read safely ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def _names(keys: list[str], limit: int = 6) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_dict_mismatches(
    ckpt_state: Mapping[str, Any], model_state: Mapping[str, Any], limit: int = 12
) -> list[str]:
    """Differences that would make ``load_state_dict(strict=True)`` fail: each layer whose shape
    differs, then the layers only the model / only the checkpoint has."""
    theirs = {plain_key(k): v for k, v in ckpt_state.items()}
    own = {plain_key(k): v for k, v in model_state.items()}
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in theirs.items()
        if k in own and hasattr(v, "shape") and hasattr(own[k], "shape") and v.shape != own[k].shape
    ]
    if len(problems) > limit:
        problems = problems[:limit] + [
            f"... and {len(problems) - limit} more layers of another shape"
        ]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    if missing:
        problems.append(f"missing in the checkpoint: {_names(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_names(unexpected)}")
    return problems


def produced_by(ckpt: Mapping[str, Any]) -> str:
    """The config a checkpoint was trained with: net, data sizes and the run's overrides."""
    hparams = ckpt.get("hyper_parameters") or {}
    net = dict(hparams.get("net") or {})
    target = net.pop("_target_", "?")
    text = f"net={target} {json.dumps(net, sort_keys=True, default=str)}"
    spec = hparams.get("spec") or {}
    if spec:
        h, w = (list(spec.get("image_size") or []) + ["?", "?"])[:2]
        text += f" on {spec.get('num_classes')} classes of {spec.get('in_channels')}x{h}x{w} images"
    overrides = run_overrides(ckpt)
    text += f" (run overrides: {' '.join(overrides) or 'none'})" if overrides is not None else ""
    return text


def run_overrides(ckpt: Mapping[str, Any]) -> list[str] | None:
    """Command-line overrides of the run that wrote ``ckpt`` (stored by ``LastCheckpoint``)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if (
            str(key).startswith("LastCheckpoint")
            and isinstance(state, Mapping)
            and "overrides" in state
        ):
            return [str(o) for o in state["overrides"]]
    return None


def check_checkpoint_fits(
    ckpt: Mapping[str, Any], model: torch.nn.Module, path: str | Path, target: str
) -> None:
    """Raise one ``CheckpointError`` naming every mismatched layer and the checkpoint's config.

    Args:
        ckpt: the loaded checkpoint.
        model: the model the weights are meant for.
        path: checkpoint file (for the message).
        target: what ``model`` is, e.g. "the model configured for this run".
    """
    problems = state_dict_mismatches(ckpt["state_dict"], model.state_dict())
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit {target}: "
            + "; ".join(problems)
            + f". The checkpoint was produced by {produced_by(ckpt)}"
        )


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild an ``ImageClassifier`` from a checkpoint alone (net and data spec come from it),
    in eval mode; the stored config is validated as data first (``imgcls.checkpointing``).

    Raises:
        CheckpointError: unreadable file, an unsafe stored config, or weights that do not fit
            the stored config (the message names each mismatched layer).
    """
    from imgcls.checkpointing.safe_load import load_safe_classifier
    from imgcls.models.classifier import ImageClassifier

    model = load_safe_classifier(ImageClassifier, path)
    model.eval()
    return model.to(map_location)


def use_tta(model: Any, cfg: Mapping[str, Any]) -> Any:
    """``cfg.tta`` (eval/predict) over the checkpoint's ``model.tta``; logs the one in use."""
    if cfg.get("tta") is not None:
        from imgcls.models.classifier import check_tta

        model.tta = check_tta(cfg.tta)
    log.info("test-time augmentation: %s", model.tta or "none")
    return model
