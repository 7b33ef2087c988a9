"""Initial backbone weights, offline: torchvision's weights enums name them; ours is only the
file-exists check (torch.hub would otherwise try, and hang on, a download)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights

from imgcls.errors import WeightsError

NO_WEIGHTS = ("", "null", "none")


def no_weights(weights: Any) -> bool:
    return weights is None or str(weights).strip().lower() in NO_WEIGHTS


@dataclass(frozen=True)
class Weights:
    """Where a backbone's initial weights are (or are expected) and the input they expect."""

    name: str  # what the log names (timm: the model to build)
    path: Path | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    missing: str  # the one-line error when the file is absent

    def check_available(self) -> None:
        if self.path is None or not self.path.is_file():
            raise WeightsError(self.missing)

    def state_dict(self) -> dict[str, Any]:
        """The file's state dict (``weights_only``: a weights file never runs code)."""
        self.check_available()
        try:
            sd = torch.load(cast(Path, self.path), map_location="cpu", weights_only=True)
        except Exception as e:  # truncated file, not a torch file, pickled code, ...
            raise WeightsError(
                f"weights file {self.path} cannot be read ({type(e).__name__}: {e})"
            ) from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise WeightsError(f"weights file {self.path} does not hold a state dict")
        return sd


def local_file(value: str, mean: Any, std: Any, name: str | None = None) -> Weights:
    path = Path(value).expanduser().resolve()
    missing = f"weights file {path} not found; fix model.weights or train from scratch with model.weights=null"
    return Weights(name or str(path), path, tuple(mean), tuple(std), missing)


def hub_file(url: str) -> Path:
    """Where torch.hub keeps ``url``: ``<hub dir>/checkpoints/<basename of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_weights(arch: str, weights: Any) -> Weights | None:
    """``DEFAULT``, an enum member (``IMAGENET1K_V2``, ``ResNet152_Weights.IMAGENET1K_V2``),
    a local ``.pth`` file, or ``None`` (random init)."""
    if no_weights(weights):
        return None
    value = str(weights).strip()
    enum = get_model_weights(arch)
    member = value.removeprefix(f"{enum.__name__}.")
    names = ["DEFAULT", *(w.name for w in enum)]
    if member in names:
        w = enum[member]  # DEFAULT is an alias member
        t, name, path = w.transforms(), f"{enum.__name__}.{w.name}", hub_file(w.url)
        missing = (
            f"pretrained weights {name} not found at {path} (offline: nothing is downloaded); "
            f"put the file from {w.url} there, or train the whole net from scratch with model.weights=null"
        )
        return Weights(name, path, tuple(t.mean), tuple(t.std), missing)
    if Path(value).suffix not in (".pth", ".pt", ".bin") and os.sep not in value:
        raise WeightsError(
            f"model.weights={value!r} is not a weights name of {arch} ({', '.join(names)}) "
            f"nor a .pth file; use one of those, a path, or model.weights=null"
        )
    # a local file is taken to be trained like torchvision's own weights (ImageNet statistics)
    t = enum.DEFAULT.transforms()
    return local_file(value, t.mean, t.std)
