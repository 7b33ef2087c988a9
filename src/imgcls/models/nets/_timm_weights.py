"""timm pretrained weights, found offline: a local file, or timm's own caches, never the network.

``model.weights`` for a timm net: ``DEFAULT`` (the model's default pretrained tag), a tag
(``a1_in1k``: ``<name>.<tag>``), a path to a ``.pth``/``.safetensors``/``.bin`` file, or
``null``. A tag is looked up where timm would download it to: the Hugging Face hub cache
(``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) for ``hf_hub_id`` weights, else torch
hub's ``checkpoints/`` dir. The file found is handed to timm as a file overlay, so timm's own
loader (input-conv adaptation, checkpoint filters) runs without any download code.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it (timm imports it)

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import torch  # noqa: E402

from imgcls.errors import ConfigError, WeightsError  # noqa: E402
from imgcls.models.nets._weights import NO_WEIGHTS  # noqa: E402

FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm tries, in its order


def import_timm() -> Any:
    """``timm``, or one line saying how to install the optional extra."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs timm: pip install -e '.[timm]'") from None
    return timm


def check_name(name: str) -> None:
    """A timm model name (optionally ``.tag``); hub/local-dir prefixes would bypass the offline rule."""
    timm = import_timm()
    if ":" in name:
        raise ConfigError(
            f"model.net.name={name!r}: use a timm model name (e.g. resnet18) and give weights "
            f"as model.weights=<file>"
        )
    if not timm.is_model(name.split(".", 1)[0]):
        close = timm.list_models(f"*{name.split('.', 1)[0]}*")[:8]
        hint = f" (close: {', '.join(close)})" if close else " (see timm.list_models())"
        raise ConfigError(f"model.net.name={name!r} is not a timm model{hint}")


@dataclass(frozen=True)
class TimmWeights:
    """Where a timm backbone's initial weights are (or are expected) and what input they expect.

    Attributes:
        model_name: ``arch.tag`` timm builds (its pretrained config gives mean/std).
        path: the local file, ``None`` when not found.
        expected: the location named when the file is missing.
        mean: per-channel normalization mean of the weights' training images.
        std: per-channel normalization std.
    """

    model_name: str
    path: Path | None
    expected: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def check_available(self) -> None:
        if self.path is not None and self.path.is_file():
            return
        if self.expected.startswith("weights file"):
            raise WeightsError(
                f"{self.expected} not found; fix model.weights or train from scratch with model.weights=null"
            )
        raise WeightsError(
            f"pretrained weights for {self.model_name} not found: {self.expected} (offline: "
            f"nothing is downloaded); put the file there, or train from scratch with model.weights=null"
        )


def _pretrained_cfg(name: str, tag: str | None) -> Any:
    from timm.models import get_pretrained_cfg

    full = f"{name}.{tag}" if tag else name
    try:
        cfg = get_pretrained_cfg(full, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None and tag is not None:
        import timm

        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{name}.*")]
        raise WeightsError(
            f"model.weights={tag!r} is not a pretrained tag of {name} "
            f"({', '.join(['DEFAULT', *tags]) if tags else 'it has none'}); use a tag, a file, or null"
        )
    return cfg


def _cached_file(cfg: Any) -> tuple[Path | None, str]:
    """(file in timm's cache or ``None``, the location to name when it is missing)."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = str(cfg.hf_hub_id).partition("@")
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
        for f in files:
            found = try_to_load_from_cache(repo, f, revision=revision or None)
            if isinstance(found, str):
                return Path(found), found
        where = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return None, f"{where}/snapshots/<revision>/{files[0]} (Hugging Face hub {repo})"
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        return (path if path.is_file() else None), f"{path} (from {cfg.url})"
    raise WeightsError(
        f"{cfg.architecture}: timm lists no weights file for it; use model.weights=<file> or null"
    )


def resolve_timm_weights(name: str, weights: str | os.PathLike | None) -> TimmWeights | None:
    """Resolve ``model.weights`` for timm model ``name``; ``None`` means random init."""
    if weights is None or str(weights).strip().lower() in NO_WEIGHTS:
        return None
    check_name(name)
    value = str(weights).strip()
    arch, _, name_tag = name.partition(".")
    path = Path(value).expanduser()
    if path.suffix in FILE_SUFFIXES or os.sep in value:
        cfg = _pretrained_cfg(arch, name_tag or None)  # its mean/std describe the file's training
        mean = tuple(cfg.mean) if cfg is not None else (0.485, 0.456, 0.406)
        std = tuple(cfg.std) if cfg is not None else (0.229, 0.224, 0.225)
        return TimmWeights(name, path.resolve(), f"weights file {path.resolve()}", mean, std)
    tag = (name_tag or None) if value == "DEFAULT" else value
    if name_tag and value not in ("DEFAULT", name_tag):
        raise ConfigError(
            f"model.net.name={name!r} already names tag {name_tag!r}; model.weights={value!r} "
            f"names another (use DEFAULT)"
        )
    cfg = _pretrained_cfg(arch, tag)
    if cfg is None:
        raise WeightsError(
            f"{arch} has no pretrained weights in timm; use model.weights=<file> or null"
        )
    found, expected = _cached_file(cfg)
    return TimmWeights(
        f"{arch}.{cfg.tag}" if cfg.tag else arch, found, expected, tuple(cfg.mean), tuple(cfg.std)
    )
