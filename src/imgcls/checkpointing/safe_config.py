"""Checkpoint-held configs are data: an explicit registry of what a stored config may name.

Nothing read from a file reaches ``hydra.utils.instantiate``: the tree is validated, then ``net``
(a project net by class path or short name, or a user net registered by config
``extras.allowed_nets``, never by a checkpoint), ``optimizer`` and ``scheduler`` (exact lists from
``torch.optim``) are resolved here and called with plain values. Any other ``_target_`` or Hydra
special key is refused before anything is imported, naming the key path."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from imgcls.errors import CheckpointError, ConfigError

# project nets: exact class path -> short name (both accepted as a target)
PROJECT_NETS: dict[str, str] = {
    "imgcls.models.nets.lenet.LeNet": "lenet",
    "imgcls.models.nets.mlp.MLP": "mlp",
    "imgcls.models.nets.simple_cnn.SimpleCNN": "simple_cnn",
    "imgcls.models.nets.resnet.FrozenResNet": "resnet",
    "imgcls.models.nets.timm_net.TimmNet": "timm",
}
OPTIMIZERS = frozenset(
    f"torch.optim.{n}"
    for n in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta")
)
# ChainedScheduler / LambdaLR take objects or callables: not expressible as data. SequentialLR is
# a composite: its ``schedulers`` children are configs, each checked against SCHEDULERS.
COMPOSITE_SCHEDULERS = frozenset({"torch.optim.lr_scheduler.SequentialLR"})
# keys of a composite config consumed by imgcls.models.schedules (not SequentialLR arguments)
COMPOSITE_PLAN_KEYS = frozenset({"warmup_fraction", "warmup_epochs"})
SCHEDULERS = frozenset(
    f"torch.optim.lr_scheduler.{n}"
    for n in [
        "OneCycleLR",
        "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts",
        "StepLR",
        "MultiStepLR",
        "ExponentialLR",
        "LinearLR",
        "ConstantLR",
        "PolynomialLR",
        "ReduceLROnPlateau",
    ]
)
# Hydra keys a stored config may carry at an allowed position (ignored: we call the class)
HARMLESS_KEYS = frozenset({"_target_", "_partial_"})
ROLES = ("net", "optimizer", "scheduler")

_user_nets: set[str] = set()


class UnsafeCheckpointError(CheckpointError):
    """A stored config names something outside the registry, or where no name is allowed."""


def register_nets(paths: Iterable[str]) -> None:
    """Allow the user's own nets (exact ``module.Class`` paths, from config) in checkpoints;
    ``ConfigError`` for a path that does not name an ``nn.Module`` subclass."""
    for path in paths:
        path = str(path)
        cls = _import(path, "extras.allowed_nets")
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
            raise ConfigError(f"extras.allowed_nets: {path!r} is not an nn.Module class")
        _user_nets.add(path)


def register_nets_from_config(cfg: Mapping[str, Any]) -> None:
    """``register_nets(cfg.extras.allowed_nets)``; call once per entry point."""
    extras = cfg.get("extras") or {}
    register_nets(extras.get("allowed_nets") or [])


def _allowed(role: str) -> dict[str, str]:
    """Every allowed target of ``role`` (short names and exact paths) -> exact class path."""
    if role == "net":
        table = {path: path for path in [*PROJECT_NETS, *_user_nets]}
        return table | {short: path for path, short in PROJECT_NETS.items()}
    names = OPTIMIZERS if role == "optimizer" else SCHEDULERS | COMPOSITE_SCHEDULERS
    table = {n: n for n in names}
    table.update({n.rsplit(".", 1)[1]: n for n in names})  # "Adam" for "torch.optim.Adam"
    return table


def _refusal(key: str, value: Any, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{key}={value!r} is refused: {why}")


def _registry_hint(role: str) -> str:
    if role == "net":
        own = ", ".join(f"{s} ({p})" for p, s in PROJECT_NETS.items())
        users = f"; registered by config: {', '.join(sorted(_user_nets))}" if _user_nets else ""
        return f"registered nets are {own}{users}; add your own with extras.allowed_nets"
    names = sorted(OPTIMIZERS if role == "optimizer" else SCHEDULERS | COMPOSITE_SCHEDULERS)
    return f"allowed {role}s are {', '.join(n.rsplit('.', 1)[1] for n in names)}"


def validate_hparams(hparams: Mapping[str, Any], root: str = "hyper_parameters") -> None:
    """Check a whole stored hyper-parameter tree before anything is built from it: the first
    special key outside ``<root>.{net,optimizer,scheduler}``, or a target there outside the
    registry, raises ``UnsafeCheckpointError`` naming the key path and value."""
    if not isinstance(hparams, Mapping):
        raise UnsafeCheckpointError(f"{root} is a {type(hparams).__name__}, not a mapping")
    for key, value in hparams.items():
        path = f"{root}.{key}"
        if _is_special(key):
            raise _refusal(path, value, "a checkpoint may not name code to call")
        if key in ROLES and isinstance(value, Mapping):
            _check_role(key, value, path)
        else:
            _check_data(value, path)


def _is_special(key: Any) -> bool:
    # _target_, _args_, _recursive_, Lightning's _instantiator/_class_path, ...
    return isinstance(key, str) and key.startswith("_")


def is_composite(cfg: Any) -> bool:
    """A scheduler config naming SequentialLR (short name or exact path)."""
    target = cfg.get("_target_") if isinstance(cfg, Mapping) else None
    return _allowed("scheduler").get(str(target)) in COMPOSITE_SCHEDULERS


def _check_role(role: str, cfg: Mapping[str, Any], path: str, child: bool = False) -> None:
    target = cfg.get("_target_")
    if not isinstance(target, str) or target not in _allowed(role):
        raise _refusal(f"{path}._target_", target, _registry_hint(role))
    composite = role == "scheduler" and is_composite(cfg)
    if composite and child:
        raise _refusal(f"{path}._target_", target, "a composite scheduler cannot be nested")
    for key, value in cfg.items():
        if _is_special(key) and key not in HARMLESS_KEYS:
            raise _refusal(f"{path}.{key}", value, "only _target_ and _partial_ are allowed here")
        if composite and key == "schedulers":
            _check_children(value, f"{path}.{key}")
        elif key not in HARMLESS_KEYS:
            _check_data(value, f"{path}.{key}")


def _check_children(value: Any, path: str) -> None:
    if not isinstance(value, list | tuple) or not value:
        raise _refusal(path, value, "a composite scheduler needs a list of scheduler configs")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _refusal(f"{path}[{i}]", item, "each child is a scheduler config")
        _check_role("scheduler", item, f"{path}[{i}]", child=True)


def _check_data(value: Any, path: str) -> None:
    """Plain data only: no special key at any depth."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _is_special(key):
                raise _refusal(f"{path}.{key}", item, "a nested config may not name code to call")
            _check_data(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_data(item, f"{path}[{i}]")
    elif not isinstance(value, str | int | float | bool | type(None) | torch.Tensor):
        raise _refusal(path, value, f"a {type(value).__name__} is not plain data")


def _import(path: str, what: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{what}: cannot import {path!r} ({e})") from None


def resolve(role: str, target: str, what: str | None = None) -> type:
    """The class a validated ``<role>._target_`` names (exact path or short name)."""
    table = _allowed(role)
    if target not in table:
        raise _refusal(f"{what or role}._target_", target, _registry_hint(role))
    return _import(table[target], f"{what or role}._target_")


def call_registered(
    role: str, cfg: Mapping[str, Any], *args: Any, what: str | None = None, **extra: Any
) -> Any:
    """``Class(*args, **cfg_values, **extra)`` for a validated ``cfg``; ``ConfigError`` names an
    argument the class does not take."""
    what = what or f"model.{role}"
    cls = resolve(role, str(cfg.get("_target_")), what)
    kwargs = {**{k: v for k, v in cfg.items() if k not in HARMLESS_KEYS}, **extra}
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{what} ({cls.__name__}): {e}") from None
    return cls(*args, **kwargs)


def call_composite(
    cfg: Mapping[str, Any],
    optimizer: Any,
    child_extra: list[dict[str, Any]],
    **extra: Any,
) -> Any:
    """Build a validated composite (SequentialLR): each child through ``call_registered``,
    then the composite with the built children; nothing goes through Hydra."""
    children = []
    for i, child in enumerate(cfg["schedulers"]):
        extra_i = child_extra[i] if i < len(child_extra) else {}
        what = f"model.scheduler.schedulers[{i}]"
        children.append(call_registered("scheduler", child, optimizer, what=what, **extra_i))
    own = {k: v for k, v in cfg.items() if k not in COMPOSITE_PLAN_KEYS and k != "schedulers"}
    return call_registered("scheduler", own, optimizer, schedulers=children, **extra)


def scheduler_class(cfg: Mapping[str, Any]) -> type:
    """The scheduler class a validated config names."""
    return resolve("scheduler", str(cfg.get("_target_")), "model.scheduler")
