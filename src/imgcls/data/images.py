"""How an image file becomes a uint8 tensor (decode, channels, resize), decided in one place:
training data and the images a checkpoint later predicts on are decoded identically."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from imgcls.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
# PIL modes that hold one channel; anything else is decoded as RGB when channels is not set.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"})
# OSError covers PIL.UnidentifiedImageError
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def resolve_under(root: str | os.PathLike, name: str, where: str = "") -> Path:
    """``root/name`` as an absolute path, refusing absolute names and paths that escape ``root``.

    Lexical check (``..``): a symlink inside ``root`` is honoured, ``../../etc/passwd`` is not."""
    at = f" ({where})" if where else ""
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or name[1:2] == ":":
        raise DataError(f"image path {name!r}{at} must be relative to the image directory {root}")
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, name))
    if path == base or not path.startswith(base + os.sep):
        raise DataError(f"image path {name!r}{at} escapes the image directory {base}")
    return Path(path)


def target_size(
    native: tuple[int, int],
    image_size: Sequence[int] | None = None,
    resize_factor: int | None = None,
) -> tuple[int, int]:
    """(height, width) a ``native`` (h, w) image is decoded to: ``image_size``, native shrunk
    by ``resize_factor`` (the seed CNN's 8), or native."""
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    if resize_factor:
        return max(1, native[0] // int(resize_factor)), max(1, native[1] // int(resize_factor))
    return native


def check_size_options(image_size: Sequence[int] | None, resize_factor: int | None) -> None:
    if image_size is not None and resize_factor is not None:
        raise ConfigError("set either data.image_size or data.resize_factor, not both")
    if image_size is not None and (len(image_size) != 2 or min(int(s) for s in image_size) < 1):
        raise ConfigError(
            f"data.image_size must be [height, width] with positive sizes, got {list(image_size)}"
        )
    if resize_factor is not None and int(resize_factor) < 1:
        raise ConfigError(f"data.resize_factor must be a positive integer, got {resize_factor}")


def probe_image(path: str | os.PathLike) -> tuple[tuple[int, int], str]:
    """(height, width) and PIL mode from the file header, without decoding the pixels."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file not found: {p}")
    try:
        with Image.open(p) as img:
            return (img.height, img.width), img.mode
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {p}: {e}") from None


def decode_image(
    path: str | os.PathLike,
    channels: int | None = None,
    image_size: Sequence[int] | None = None,
    resize_factor: int | None = None,
    data: bytes | None = None,
) -> np.ndarray:
    """One file (or its encoded ``data``) -> uint8 ``(H, W, C)``; errors name the file.

    Large JPEGs that shrink a lot decode at a reduced DCT scale (``Image.draft``, at least twice
    the target size), then resize with antialiasing as torchvision's does."""
    p = Path(path)
    if data is None and not p.is_file():
        raise DataError(f"image file not found: {p}")
    try:
        with Image.open(p if data is None else io.BytesIO(data)) as img:
            if channels is None:
                channels = 1 if img.mode in GRAY_MODES else 3
            mode = "L" if channels == 1 else "RGB"
            h, w = target_size((img.height, img.width), image_size, resize_factor)
            if (h, w) != (img.height, img.width) and img.format == "JPEG":
                img.draft(mode, (2 * w, 2 * h))
            img.load()  # a full decode: truncated files fail here, not mid-epoch
            out = img.convert(mode) if img.mode != mode else img
            if (out.height, out.width) != (h, w):
                out = out.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.array(out, dtype=np.uint8)  # writable: torch.from_numpy needs it
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {p}: {e}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_steps(channels: int, size: Sequence[int]) -> list[dict[str, Any]]:
    """What ``decode_image`` does to a file for a model input of ``channels`` x ``size``, as data.

    The export sidecar writes these steps down (then scale and normalize) so code outside this
    package can reproduce predict.py with PIL. Change this list and ``decode_image`` together:
    a test replays it against predict.py."""
    mode = "L" if channels == 1 else "RGB"
    h, w = int(size[0]), int(size[1])
    return [
        {"op": "open", "library": "PIL", "call": "Image.open(path)"},
        {
            "op": "jpeg_draft",
            "when": "the file is a JPEG (img.format == 'JPEG') and its size differs from the target",
            "call": f"img.draft({mode!r}, ({2 * w}, {2 * h}))",
            "mode": mode,
            "size_wh": [2 * w, 2 * h],
            "why": "reduced-size DCT decode (scale 1/2, 1/4 or 1/8, never below twice the target)",
        },
        {"op": "load", "call": "img.load()"},
        {
            "op": "convert",
            "when": f"img.mode != {mode!r}",
            "call": f"img.convert({mode!r})",
            "mode": mode,
        },
        {
            "op": "resize",
            "when": f"the size differs from height {h} x width {w}",
            "call": f"img.resize(({w}, {h}), Image.Resampling.BILINEAR)",
            "size_hw": [h, w],
            "resample": "bilinear (PIL, antialiased when shrinking); aspect ratio not kept",
        },
        {
            "op": "to_array",
            "call": "np.asarray(img, dtype=np.uint8), (H, W) -> (1, H, W), (H, W, 3) -> (3, H, W)",
            "layout": "CHW",
        },
    ]


def load_image(
    path: str | os.PathLike,
    channels: int | None = None,
    size: Sequence[int] | None = None,
    where: str = "",
    resize_factor: int | None = None,
) -> Tensor:
    """``decode_image`` as a ``(C, H, W)`` tensor; ``where`` (CSV row) joins the error."""
    try:
        arr = decode_image(path, channels, size, resize_factor)
    except DataError as e:
        raise DataError(f"{e} ({where})" if where else str(e)) from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
