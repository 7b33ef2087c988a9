"""Checks of a checkpoint Lightning restores into a model (``trainer.fit/validate/test(
ckpt_path=...)``). ``ImageClassifier.on_load_checkpoint`` runs them before any state is restored,
however the Trainer was made: ours, or a notebook's handed a file by someone else."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from imgcls.engine.boundary import short
from imgcls.engine.checkpoints.load import check_layout, validate_checkpoint
from imgcls.engine.checkpoints.resume import check_resume_plan
from imgcls.models.compiled import plain_state_dict

log = logging.getLogger(__name__)


def check_restored(module: Any, checkpoint: dict[str, Any]) -> None:
    """Refuse an unsafe stored config, callback states naming files elsewhere and a resume that
    cannot continue; accept weights saved under ``net._orig_mod.`` (a compiled net)."""
    trainer = getattr(module, "_trainer", None)
    path = str(getattr(trainer, "ckpt_path", None) or "being restored")
    check_layout(checkpoint, path)
    validate_checkpoint(checkpoint, path)
    if trainer is not None:
        check_callback_states(checkpoint, trainer, f"checkpoint {path}")
        if trainer.state.fn == "fit":
            limits = trainer.max_epochs, trainer.max_steps
            check_resume_plan(checkpoint, module.hparams, *limits, path)
    checkpoint["state_dict"] = plain_state_dict(checkpoint["state_dict"])


# ModelCheckpoint state entries that name files (Lightning deletes "old" best files by them)
STATE_PATHS = ("dirpath", "best_model_path", "last_model_path", "kth_best_model_path")


def check_callback_states(checkpoint: dict[str, Any], trainer: Any, where: str) -> None:
    """Before Lightning restores them: drop, with one warning line, every ``ModelCheckpoint``
    state naming a file that does not resolve (``..``, symlinks) inside the live callback's
    checkpoint directory, or that misses what Lightning reads."""
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict):
        return
    for cb in trainer.callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.state_key not in states:
            continue
        why = _state_problem(states[cb.state_key], cb.dirpath)
        if why:
            del states[cb.state_key]
            log.warning("%s: ModelCheckpoint state not restored: %s", where, why)


def _state_problem(state: Any, dirpath: Any) -> str | None:
    if not isinstance(state, Mapping) or not isinstance(state.get("best_k_models", {}), Mapping):
        return "not a mapping of plain values"
    missing = [k for k in ("best_model_path", "best_model_score") if k not in state]
    if missing or not dirpath:
        return f"no {', '.join(missing) or 'checkpoint directory'}"
    root = Path(str(dirpath)).resolve()
    for value in [*(state.get(k) for k in STATE_PATHS), *state.get("best_k_models", {})]:
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not Path(value).resolve().is_relative_to(root):
            return f"{short(value)} is not inside {root}"
    return None
