"""Rebuild an ``ImageClassifier`` from a checkpoint file alone, without running code from it.

Every way a checkpoint becomes a model goes through ``read_safe_checkpoint``: the file is read
with ``torch.load(weights_only=True)``, then its whole ``hyper_parameters`` tree is validated
against the registry (``imgcls.checkpointing.safe_config``) before any class is resolved.
Used by ``load_classifier`` (eval, predict, export), ``ImageClassifier.load_from_checkpoint``
and resume (``imgcls.checkpointing.fit_guard``, ``ImageClassifier.on_load_checkpoint``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from imgcls.checkpointing.load import check_checkpoint_fits, load_checkpoint_dict
from imgcls.checkpointing.safe_config import UnsafeCheckpointError, validate_hparams
from imgcls.errors import CheckpointError
from imgcls.models.compiled import plain_state_dict


def validate_checkpoint(ckpt: Mapping[str, Any], path: str | Path | None = None) -> None:
    """Raise ``UnsafeCheckpointError`` (naming the file) unless the stored config is data only."""
    hparams = ckpt.get("hyper_parameters")
    if hparams is None:
        return
    try:
        validate_hparams(hparams)
    except UnsafeCheckpointError as e:
        where = f"checkpoint {path}: " if path is not None else ""
        raise UnsafeCheckpointError(f"{where}{e}") from None


def read_safe_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``load_checkpoint_dict`` (weights_only) plus ``validate_checkpoint``."""
    ckpt = load_checkpoint_dict(path, mmap=mmap)
    validate_checkpoint(ckpt, path)
    return ckpt


def check_loaded_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_load_checkpoint`` of a model restored by a Trainer (``fit``/``test(ckpt_path=)``):
    refuse an unsafe stored config and a resume that cannot continue; strip ``_orig_mod.``."""
    from imgcls.checkpointing.resume_plan import check_resume_plan

    trainer = getattr(module, "_trainer", None)
    path = getattr(trainer, "ckpt_path", None)
    validate_checkpoint(checkpoint, path)
    if trainer is not None and trainer.state.fn == "fit":
        check_resume_plan(checkpoint, module.hparams, trainer.max_epochs, trainer.max_steps, path)
    checkpoint["state_dict"] = plain_state_dict(checkpoint["state_dict"])


def load_safe_classifier(
    cls: type,
    path: str | Path,
    map_location: Any = None,
    strict: bool | None = None,
    weights_only: bool | None = None,
    hparams_file: Any = None,
    **overrides: Any,
) -> Any:
    """What ``ImageClassifier.load_from_checkpoint`` does, with the stored config as data.

    Args:
        cls: the LightningModule class (``ImageClassifier`` or a subclass).
        path: checkpoint file.
        map_location: device to move the model to (a string or ``torch.device``).
        strict: ``False`` loads weights non-strictly; otherwise every layer must fit.
        weights_only: must not be ``False``: the file is always read with ``weights_only=True``.
        hparams_file: not supported (the hyper-parameters are the checkpoint's own).
        **overrides: hyper-parameters replacing the stored ones (validated the same way).

    Raises:
        CheckpointError: unreadable file, an unsafe stored config (``UnsafeCheckpointError``
            naming the key path and target), or weights that do not fit.
    """
    if weights_only is False:
        raise CheckpointError(
            f"{path}: weights_only=False is not supported; ImageClassifier checkpoints are "
            f"always read with weights_only=True"
        )
    if hparams_file is not None:
        raise CheckpointError(
            f"{path}: hparams_file is not supported; the hyper-parameters come from the "
            f"checkpoint (pass overrides as keyword arguments)"
        )
    ckpt = read_safe_checkpoint(path)
    stored = ckpt.get("hyper_parameters")
    if not stored or "net" not in stored or "spec" not in stored:
        raise CheckpointError(f"{path} has no ImageClassifier hyper-parameters (net/spec)")
    hparams = {**stored, **overrides}
    validate_checkpoint({"hyper_parameters": hparams}, path)
    accepted = inspect.signature(cls).parameters
    model = cls(**{k: v for k, v in hparams.items() if k in accepted})
    if strict is not False:
        check_checkpoint_fits(ckpt, model, path, "the model built from its own config")
    model.load_state_dict(plain_state_dict(ckpt["state_dict"]), strict=strict is not False)
    if isinstance(map_location, str | torch.device):
        model = model.to(map_location)
    return model
