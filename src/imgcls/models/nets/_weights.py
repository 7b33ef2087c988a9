"""Pretrained torchvision weights, resolved and loaded without ever touching the network.

``model.weights`` names the initial weights of a torchvision backbone: ``DEFAULT``, an enum
member name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, or ``ResNet152_Weights.IMAGENET1K_V2``), a
path to a local ``.pth`` state dict, or ``null`` for a random initialization. Enum weights are
read from torchvision's cache (``$TORCH_HOME/hub/checkpoints/<file>``); when the file is absent
we stop with one line naming it instead of letting torch.hub try (and hang on) a download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights

from imgcls.errors import WeightsError

NO_WEIGHTS = ("", "null", "none")


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a backbone's initial weights come from and what input they expect.

    Attributes:
        name: ``ResNet152_Weights.IMAGENET1K_V2`` or the local file path.
        path: the file the state dict is read from.
        mean: per-channel normalization of the images the weights were trained on.
        std: per-channel normalization std.
        enum: the torchvision ``WeightsEnum`` member (``None`` for a local file).
    """

    name: str
    path: Path
    mean: tuple[float, ...]
    std: tuple[float, ...]
    enum: Any = None

    def check_available(self) -> None:
        """Raise ``WeightsError`` (one line, the exact path, the escape) unless the file exists."""
        if self.path.is_file():
            return
        if self.enum is None:
            raise WeightsError(
                f"weights file {self.path} not found; fix model.weights or train the whole net from scratch with model.weights=null"
            )
        raise WeightsError(
            f"pretrained weights {self.name} not found at {self.path} (offline: nothing is downloaded); "
            f"put the file from {self.enum.url} there, or train the whole net from scratch with model.weights=null"
        )

    def state_dict(self) -> dict[str, Any]:
        """Load the state dict (``weights_only``: a weights file never runs code)."""
        self.check_available()
        try:
            if self.enum is not None:
                # torchvision's own loader finds the cached file; it only downloads when the file
                # is missing, which check_available() has just ruled out.
                sd = self.enum.get_state_dict(progress=False, check_hash=False, weights_only=True)
            else:
                sd = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated file, not a torch file, pickled code, ...
            raise WeightsError(
                f"weights file {self.path} cannot be read ({type(e).__name__}: {e})"
            ) from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise WeightsError(f"weights file {self.path} does not hold a state dict")
        return sd


def cache_path(url: str) -> Path:
    """The file torch.hub reads ``url`` from: ``<hub dir>/checkpoints/<basename of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def resolve_weights(arch: str, weights: str | os.PathLike | None) -> PretrainedWeights | None:
    """Resolve ``model.weights`` for a torchvision ``arch``; ``None`` means random init.

    Raises:
        WeightsError: an unknown weights name that is not an existing file either.
    """
    if weights is None or str(weights).strip().lower() in NO_WEIGHTS:
        return None
    value = str(weights).strip()
    enum = get_model_weights(arch)
    member = value.split(".", 1)[1] if value.startswith(f"{enum.__name__}.") else value
    names = ["DEFAULT", *(w.name for w in enum)]
    default = enum.DEFAULT.transforms()
    if member in names:
        w = enum.DEFAULT if member == "DEFAULT" else enum[member]
        t = w.transforms()
        return PretrainedWeights(
            name=f"{enum.__name__}.{w.name}",
            path=cache_path(w.url),
            mean=tuple(t.mean),
            std=tuple(t.std),
            enum=w,
        )
    path = Path(value).expanduser()
    looks_like_file = path.suffix in (".pth", ".pt", ".bin") or os.sep in value
    if not looks_like_file:
        raise WeightsError(
            f"model.weights={value!r} is not a weights name of {arch} ({', '.join(names)}) "
            f"nor a .pth file; use one of those, a path, or model.weights=null"
        )
    # A local file is taken to be trained like torchvision's own weights (ImageNet statistics).
    return PretrainedWeights(
        name=str(path), path=path.resolve(), mean=tuple(default.mean), std=tuple(default.std)
    )
