"""The trust boundary: the only way a config read from a file becomes objects.

Files are a checkpoint's ``hyper_parameters``, ``datamodule_hyper_parameters`` and callback
states. Nothing read from them reaches Hydra's ``instantiate`` or OmegaConf resolution:

- the tree (dicts, lists, tuples) may hold plain values only; ``${...}`` strings and special keys
  (``_args_``, ``_recursive_``, ``_instantiator``, ...) are refused; ``_target_`` only where a
  class is expected (``_partial_: true`` too, for optimizers and schedulers);
- a class is found by importing its module and taking exactly one attribute, which must be a
  class defined in that module and of an allowed kind: an ``nn.Module`` under
  ``imgcls.models.nets``, a datamodule under ``imgcls.data`` (either also in a module of the
  user's own under the project's ``src/``), the exact optimizer and scheduler lists, or what the
  current command's ``extras.allowed_*`` lists (a file never extends them);
- it is called with plain keyword values, and where it writes comes from the current config;
- anything malformed is one ``UnsafeCheckpointError`` naming the key path (callers add the file).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from imgcls.errors import CheckpointError, ConfigError, UserError
from imgcls.utils.files import project_root

OPTIMIZERS = frozenset(
    f"torch.optim.{n}"
    for n in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta")
)
# ChainedScheduler / LambdaLR take objects or callables: not expressible as data. SequentialLR is
# a composite: its ``schedulers`` children are scheduler configs themselves.
COMPOSITE = "torch.optim.lr_scheduler.SequentialLR"
PLAN_KEYS = frozenset({"warmup_fraction", "warmup_epochs"})  # read by imgcls.models.schedules
_SCHEDULER_NAMES = (
    "OneCycleLR CosineAnnealingLR CosineAnnealingWarmRestarts StepLR MultiStepLR ExponentialLR "
    "LinearLR ConstantLR PolynomialLR ReduceLROnPlateau SequentialLR"
)
SCHEDULERS = frozenset(f"torch.optim.lr_scheduler.{n}" for n in _SCHEDULER_NAMES.split())
EXACT = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
PACKAGES = {"net": "imgcls.models.nets.", "datamodule": "imgcls.data."}
BASES: dict[str, tuple[type, ...]] = {
    "net": (nn.Module,),
    "datamodule": (L.LightningDataModule,),
    "optimizer": (Optimizer,),
    "scheduler": (LRScheduler, ReduceLROnPlateau),
}
PLAIN = (str, int, float, bool, type(None))
# datamodule keys used only for training (built from the user's config then): never read here
TRAINING_ONLY = frozenset({"train_augment", "batch_mix"})

log = logging.getLogger(__name__)
_allowed: dict[str, frozenset[str]] = {kind: frozenset() for kind in BASES}


class UnsafeCheckpointError(CheckpointError):
    """A stored config names code, or holds a value that cannot be what it claims."""


def refusal(path: str, value: Any, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{path}={short(value)} is refused: {why}")


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def allow_from_config(cfg: Mapping[str, Any]) -> None:
    """The user's own classes a file may name: ``extras.allowed_{nets,datamodules,optimizers,
    schedulers}`` of the current command (call once per entry point; files never reach this)."""
    extras = cfg.get("extras") or {}
    for kind in BASES:
        paths = frozenset(str(p) for p in extras.get(f"allowed_{kind}s") or [])
        _allowed[kind] = paths
        for path in paths:
            try:
                resolve(kind, path, f"extras.allowed_{kind}s")
            except UnsafeCheckpointError as e:
                raise ConfigError(str(e)) from None


def _hint(kind: str) -> str:
    names = ", ".join(sorted(n.rsplit(".", 1)[1] for n in EXACT.get(kind, ())))
    if kind in PACKAGES:
        names = f"{BASES[kind][0].__name__} classes defined under {PACKAGES[kind]}* or in the project's src/"
    return f"allowed {kind}s are {names}; add your own with extras.allowed_{kind}s"


ENTRY_POINTS = frozenset({"train", "eval", "predict", "export"})  # src/<name>.py scripts


def project_module(module: str) -> bool:
    """A module of the user's own code in the project's ``src/`` (a new net or datamodule next
    to ``imgcls``), not an installed library's: its top-level package is found there without
    importing anything first."""
    top = module.partition(".")[0]
    if not top or top == "imgcls" or top in ENTRY_POINTS:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    places = [] if spec is None else list(spec.submodule_search_locations or [spec.origin or ""])
    src = (project_root() / "src").resolve()
    return bool(places) and all(p and Path(p).resolve().is_relative_to(src) for p in places)


def resolve(kind: str, target: Any, path: str) -> type:
    """The class ``target`` names, if it is of an allowed ``kind``: one attribute of an imported
    module, defined there (no attribute walk such as ``pkg.mod.Path.unlink``)."""
    if not isinstance(target, str):
        raise refusal(path, target, f"a {kind} is named by a 'module.Class' string")
    own = target in _allowed[kind] or target in EXACT.get(kind, ())
    ours = target.startswith(PACKAGES.get(kind, "\0"))
    if not own and not ours and not (kind in PACKAGES and project_module(target)):
        raise refusal(path, target, _hint(kind))
    module, _, name = target.rpartition(".")
    try:
        cls = vars(importlib.import_module(module)).get(name)
    except (ImportError, ValueError, TypeError) as e:
        raise refusal(path, target, f"cannot import {module!r} ({e})") from None
    if target in EXACT.get(kind, ()):  # our exact list (torch re-exports these in torch.optim)
        return cls  # type: ignore[return-value]
    # a package-wide kind: only classes defined there (not e.g. csv_table's import of Path); an
    # exact string of the user's own list: the class it names, as their config writes it
    if not inspect.isclass(cls) or (not own and cls.__module__ != module):
        real = f" (write {cls.__module__}.{cls.__qualname__})" if inspect.isclass(cls) else ""
        raise refusal(path, target, f"not a class defined in {module}{real}")
    if not issubclass(cls, BASES[kind]):
        raise refusal(path, target, f"not a subclass of {BASES[kind][0].__name__}")
    return cls


def check_plain(value: Any, path: str, nested: str | None = None) -> None:
    """Plain data at any depth: no special key, no interpolation, no object. ``nested``: a kind
    whose configs may sit inside (a net's sub-modules), checked as such."""
    if isinstance(value, Mapping):
        if nested and "_target_" in value:
            check_node(value, nested, path)
            return
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("_"):
                raise refusal(f"{path}.{key}", item, "a file may not name code to call here")
            check_plain(item, f"{path}.{key}", nested)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{path}[{i}]", nested)
    elif isinstance(value, str) and "${" in value:
        raise refusal(path, value, "interpolations in a file are never resolved")
    elif not isinstance(value, PLAIN):
        raise refusal(path, value, f"a {type(value).__name__} is not plain data")


def check_node(node: Any, kind: str, path: str, child: bool = False) -> type:
    """Check a config that names a class of ``kind`` (``_target_`` + plain values); its class."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise refusal(path, node, f"expected a {kind} config (a mapping with _target_)")
    cls = resolve(kind, node["_target_"], f"{path}._target_")
    composite = kind == "scheduler" and node["_target_"] == COMPOSITE
    if composite and child:
        raise refusal(f"{path}._target_", node["_target_"], "a composite cannot be nested")
    for key, value in node.items():
        sub = f"{path}.{key}"
        if key == "_target_" or (key == "_partial_" and kind in EXACT and value is True):
            continue
        if composite and key == "schedulers":
            if not isinstance(value, list | tuple) or not value:
                raise refusal(sub, value, "SequentialLR needs a list of scheduler configs")
            for i, item in enumerate(value):
                check_node(item, "scheduler", f"{sub}[{i}]", child=True)
        else:
            check_plain({key: value}, path, "net" if kind == "net" else None)
    return cls


def _build(value: Any, path: str) -> Any:
    """Plain values with nested (checked) net configs built."""
    if isinstance(value, Mapping) and "_target_" in value:
        return factory(value, "net", path)()
    if isinstance(value, Mapping):
        return {k: _build(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_build(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


class Checked(partial):
    """A class from a checked config with its stored values: a call the values do not fit is a
    ``UnsafeCheckpointError`` naming the key path, not a traceback."""

    path: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UserError:
            raise
        except Exception as e:  # whatever a constructor raises on values it cannot take
            name = getattr(self.func, "__name__", "?")
            raise UnsafeCheckpointError(
                f"{self.path}: {name} cannot be built from the stored values "
                f"({type(e).__name__}: {e})"
            ) from None


def factory(node: Mapping[str, Any], kind: str, path: str, composed: bool = False) -> Any:
    """``Class(**stored values)`` waiting for the caller's arguments (a net's sizes, an
    optimizer's parameters); a composite scheduler's ``schedulers`` stay configs. ``composed``:
    the user's own config, which Hydra builds as Hydra users expect (``_partial_``, nested
    targets); a file's never is."""
    if composed:
        from hydra.utils import instantiate

        return instantiate(node, _partial_=True, _convert_="all")
    cls = check_node(node, kind, path)
    skip = {"_target_", "_partial_"}
    if node["_target_"] == COMPOSITE:
        skip |= {"schedulers", *PLAN_KEYS}
    kwargs = {k: _build(v, f"{path}.{k}") for k, v in node.items() if k not in skip}
    made = Checked(cls, **kwargs)
    made.path = path
    return made


# ImageClassifier's hyper-parameters: the classes it builds, and the type of every other value
ROLES = ("net", "optimizer", "scheduler")
NUMBER = (int, float)
SCALARS: dict[str, tuple[type, ...]] = {
    "scheduler_interval": (str,),
    "scheduler_monitor": (str,),
    "label_smoothing": NUMBER,
    "channels_last": (bool,),
    "compile": (bool,),
    "cache_features": (bool, str),
    "unfreeze_at_epoch": (int, type(None)),
    "backbone_lr_ratio": NUMBER,
    "tta": (str, type(None)),
}
# where a model reads or writes (pretrained weights, the feature cache): never from a file
NOT_FROM_FILES = frozenset({"weights", "cache_dir"})


def check_classifier(hparams: Any, root: str) -> None:
    """Every value an ``ImageClassifier`` is rebuilt from, before anything is built."""
    if not isinstance(hparams, Mapping):
        raise refusal(root, hparams, "expected a mapping of hyper-parameters")
    for key in ("net", "spec", "optimizer"):
        if key not in hparams:
            raise UnsafeCheckpointError(f"{root}.{key} is missing")
    for key, value in hparams.items():
        path = f"{root}.{key}"
        if key in ROLES and (value is not None or key != "scheduler"):
            check_node(value, key, path)
        elif key in SCALARS and not isinstance(value, SCALARS[key]):
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in SCALARS[key])
            raise refusal(path, value, f"expected {kinds}")
        else:
            check_plain({key: value}, root)
    check_spec(hparams["spec"], f"{root}.spec")


def check_spec(spec: Any, path: str) -> None:
    """A ``DataSpec`` as plain data: sizes are positive ints, names strings, mean/std numbers."""
    from imgcls.data.spec import DataSpec

    if not isinstance(spec, Mapping):
        raise refusal(path, spec, "expected a mapping (num_classes, in_channels, image_size, ...)")
    ints = lambda v: all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)  # noqa: E731
    fields = {
        "num_classes": lambda v: ints([v]),
        "in_channels": lambda v: ints([v]),
        "image_size": lambda v: isinstance(v, list | tuple) and len(v) == 2 and ints(v),
        "class_names": lambda v: isinstance(v, list | tuple) and all(isinstance(c, str) for c in v),
        "mean": lambda v: isinstance(v, list | tuple) and all(isinstance(x, NUMBER) for x in v),
        "std": lambda v: isinstance(v, list | tuple) and all(isinstance(x, NUMBER) for x in v),
    }
    for key, ok in fields.items():
        if key not in spec:
            raise UnsafeCheckpointError(f"{path}.{key} is missing")
        if not ok(spec[key]):
            raise refusal(f"{path}.{key}", spec[key], "not a valid value")
    try:
        DataSpec.from_dict(spec)
    except (ValueError, TypeError) as e:
        raise refusal(path, dict(spec), str(e)) from None


def datamodule_config(stored: Any, path: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A stored data config, checked, with the locations it writes to taken from ``cfg`` (the
    current command's paths): decode cache, generated digits sets; never a download, and never
    reads outside the data root unless the command opts in."""
    if not isinstance(stored, Mapping):
        raise refusal(path, stored, "expected a data config (a mapping with _target_)")
    data = {k: v for k, v in stored.items() if k not in TRAINING_ONLY}
    check_node(data, "datamodule", path)
    paths = cfg["paths"]
    if data.get("cache_dir") is not None:
        data["cache_dir"] = str(Path(str(paths["cache_dir"])) / "decoded")
    if data.get("digits_dir") is not None:
        data["digits_dir"] = str(paths["data_dir"])
    if "data_dir" in data:  # MNIST unpacks its archives there
        data["data_dir"] = str(paths["data_dir"])
    if "download" in data:
        data["download"] = False
    if "allow_outside_root" in data:  # an opt-in is the command's (data.allow_outside_root=true)
        data["allow_outside_root"] = False
    return data
