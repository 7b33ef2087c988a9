"""Any timm model as a backbone by name (``model=timm model.net.name=<timm model>``), without
its classifier, under a ``BackboneHead``; gray data gets a 1-channel stem (timm sums the RGB
filters). Weights, offline: a local file, or the file in timm's caches (the Hugging Face hub
cache for ``hf_hub_id`` weights, else torch hub's), handed to timm as a file overlay so timm's
own loader (stem adaptation, checkpoint filters) runs without any download code."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it (timm imports it)

from collections.abc import Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, cast  # noqa: E402

from torch import nn  # noqa: E402

from imgcls.errors import ConfigError, WeightsError  # noqa: E402
from imgcls.models.nets._backbone import BackboneHead  # noqa: E402
from imgcls.models.nets._weights import Weights, hub_file, local_file, no_weights  # noqa: E402

log = logging.getLogger(__name__)

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
        path = hub_file(cfg.url)
        return (path if path.is_file() else None), f"{path} (from {cfg.url})"
    raise WeightsError(
        f"{cfg.architecture}: timm lists no weights file for it; use model.weights=<file> or null"
    )


def timm_weights(name: str, weights: str | os.PathLike | None) -> Weights | None:
    """``DEFAULT`` (the name's default tag), a tag (``a1_in1k``), a local file, or ``None``."""
    if no_weights(weights):
        return None
    check_name(name)
    value = str(weights).strip()
    arch, _, name_tag = name.partition(".")
    path = Path(value).expanduser()
    if path.suffix in FILE_SUFFIXES or os.sep in value:
        cfg = _pretrained_cfg(arch, name_tag or None)  # its mean/std describe the file's training
        if cfg is None:
            return local_file(value, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), name)
        return local_file(value, cfg.mean, cfg.std, name)
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
    full = f"{arch}.{cfg.tag}" if cfg.tag else arch
    missing = (
        f"pretrained weights for {full} not found: {expected} (offline: nothing is downloaded); "
        f"put the file there, or train from scratch with model.weights=null"
    )
    return Weights(full, found, tuple(cfg.mean), tuple(cfg.std), missing)


class TimmNet(BackboneHead):
    """``backbone`` (a timm model without its classifier) -> ``head`` (MLP), as ``ResNetMLP``.

    ``name``: e.g. ``resnet18``, ``convnext_atto``, ``resnet18.a1_in1k``; ``image_size`` sizes
    fixed-size models (ViTs); ``weights``: ``DEFAULT`` | a pretrained tag | a file | ``None``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        name: str = "resnet18",
        weights: str | os.PathLike | None = None,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        freeze: bool | None = True,
    ) -> None:
        super().__init__()
        check_name(name)
        self.arch, self.in_channels = name, int(in_channels)
        pretrained = timm_weights(name, weights)
        self.backbone = _create(name, pretrained, self.in_channels, image_size)
        self.num_features = int(cast(int, self.backbone.num_features))
        self._init_head(num_classes, hidden, dropout, freeze, pretrained is not None)

    @classmethod
    def resolve_weights(cls, weights: Any, name: str = "resnet18", **_: Any) -> Weights | None:
        return timm_weights(name, weights)


def _create(
    name: str, pretrained: Weights | None, in_chans: int, image_size: Sequence[int]
) -> nn.Module:
    """``timm.create_model`` without a classifier; pretrained only from a local file."""
    timm = import_timm()
    from timm.models import get_pretrained_cfg

    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:  # position embeddings sized for the data
        kwargs["img_size"] = tuple(int(s) for s in image_size)
    if pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    pretrained.check_available()
    where = str(pretrained.path)
    with _load_report() as report:
        try:
            model = timm.create_model(
                pretrained.name, pretrained=True, pretrained_cfg_overlay={"file": where}, **kwargs
            )
        except Exception as e:  # not a weights file, wrong shapes, pickled code, ...
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise WeightsError(f"weights file {where} does not fit {name}: {msg}") from None
    if report:
        raise WeightsError(f"weights file {where} does not fit {name}: {'; '.join(report)}")
    log.info("%s: backbone weights %s (%s)", name, pretrained.name, where)
    return model


@contextmanager
def _load_report() -> Iterator[list[str]]:
    """timm loads pretrained weights non-strictly and only logs keys that did not fit; collect
    those messages so a file of another model is an error, not a half-loaded backbone."""
    logger = logging.getLogger("timm.models._builder")
    out: list[str] = []

    def collect(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(("Missing keys", "Unexpected keys")):
            kind, _, keys = text.partition(" (")
            names = keys.split(")")[0].split(", ")
            more = f", ... {len(names)} in all" if len(names) > 3 else ""
            out.append(f"{kind.lower()} {', '.join(names[:3])}{more}")
        return True

    level = logger.level
    logger.addFilter(collect)
    logger.setLevel(logging.INFO)  # the messages are INFO
    try:
        yield out
    finally:
        logger.removeFilter(collect)
        logger.setLevel(level)


__all__ = ["TimmNet"]
