"""Every way a checkpoint becomes a model: ``torch.load(weights_only=True)`` (never runs code
from the file), its layout checked, then its ``hyper_parameters`` through the trust boundary
(``boundary``) before anything is built; each failure is one ``CheckpointError`` naming the file."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from imgcls.engine import boundary
from imgcls.engine.boundary import UnsafeCheckpointError
from imgcls.errors import CheckpointError
from imgcls.models.compiled import plain_key, plain_state_dict

log = logging.getLogger(__name__)


def load_checkpoint_dict(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (``mmap``: cheap for picking a file); a
    missing, corrupt or non-Lightning file is a ``CheckpointError``."""
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
    check_layout(ckpt, p)
    return ckpt


# top-level entries whose type the code reading them relies on
LAYOUT: dict[str, tuple[type, ...]] = {
    "global_step": (int,),
    "epoch": (int,),
    "hyper_parameters": (dict,),
    "datamodule_hyper_parameters": (dict,),
    "callbacks": (dict,),
    "loops": (dict,),
}


def check_layout(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """``state_dict`` maps names to tensors; counters are ints; containers are dicts."""
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"checkpoint {path}: state_dict is not a mapping of names to tensors")
    for key, types in LAYOUT.items():
        value = ckpt.get(key)
        if key in ckpt and (isinstance(value, bool) or not isinstance(value, types)):
            raise CheckpointError(
                f"checkpoint {path}: {key}={boundary.short(value)} is not a {types[0].__name__}"
            )


def validate_checkpoint(ckpt: Mapping[str, Any], path: str | Path | None = None) -> None:
    """Raise ``UnsafeCheckpointError`` (naming the file) unless the stored model config is data
    the boundary accepts."""
    hparams = ckpt.get("hyper_parameters")
    if hparams is None:
        return
    with naming_file(path):
        boundary.check_classifier(hparams, "hyper_parameters")


@contextlib.contextmanager
def naming_file(path: str | Path | None) -> Iterator[None]:
    """Prefix a boundary refusal with the file it came from."""
    try:
        yield
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"checkpoint {path}: {e}" if path else str(e)) from None


def read_safe_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    ckpt = load_checkpoint_dict(path, mmap=mmap)
    validate_checkpoint(ckpt, path)
    return ckpt


def _names(keys: list[str], limit: int = 6) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_dict_mismatches(
    ckpt_state: Mapping[str, Any], model_state: Mapping[str, Any], limit: int = 12
) -> list[str]:
    """Why ``load_state_dict(strict=True)`` would fail: shape mismatches, then missing/extra keys."""
    theirs = {plain_key(k): v for k, v in ckpt_state.items()}
    own = {plain_key(k): v for k, v in model_state.items()}
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in theirs.items()
        if k in own and hasattr(v, "shape") and hasattr(own[k], "shape") and v.shape != own[k].shape
    ]
    if len(problems) > limit:
        more = f"... and {len(problems) - limit} more layers of another shape"
        problems = [*problems[:limit], more]
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
        ours = str(key).startswith("LastCheckpoint") and isinstance(state, Mapping)
        if ours and "overrides" in state:
            return [str(o) for o in state["overrides"]]
    return None


def check_checkpoint_fits(
    ckpt: Mapping[str, Any], model: torch.nn.Module, path: str | Path, target: str
) -> None:
    """One ``CheckpointError`` naming every mismatched layer and the checkpoint's config;
    ``target`` says what ``model`` is (e.g. "the model configured for this run")."""
    problems = state_dict_mismatches(ckpt["state_dict"], model.state_dict())
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit {target}: "
            + "; ".join(problems)
            + f". The checkpoint was produced by {produced_by(ckpt)}"
        )


def load_safe_classifier(
    cls: type,
    path: str | Path,
    map_location: Any = None,
    hparams_file: Any = None,
    strict: bool | None = None,
    weights_only: bool | None = None,
    **overrides: Any,
) -> Any:
    """``ImageClassifier.load_from_checkpoint`` (Lightning's signature) with the stored config as
    data; ``overrides`` replace stored hyper-parameters and are validated the same way."""
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
    # locations (pretrained weights, feature cache) only from the caller, never from the file
    stored = {k: v for k, v in stored.items() if k not in boundary.NOT_FROM_FILES}
    hparams = {**stored, **overrides}
    validate_checkpoint({"hyper_parameters": hparams}, path)
    accepted = inspect.signature(cls).parameters
    with naming_file(path):
        model = cls(**{k: v for k, v in hparams.items() if k in accepted})
    if strict is not False:
        check_checkpoint_fits(ckpt, model, path, "the model built from its own config")
    model.load_state_dict(plain_state_dict(ckpt["state_dict"]), strict=strict is not False)
    if isinstance(map_location, str | torch.device):
        model = model.to(map_location)
    return model
