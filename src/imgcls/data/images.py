"""Decoding image files into uint8 tensors, with errors that name the file.

Every file-based source (CSV, ImageFolder, predict inputs) goes through these functions, so
"how an image becomes a tensor" (decode, channels, resize) is decided in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from imgcls.errors import DataError

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


def resolve_under(root: str | os.PathLike, name: str, where: str = "") -> Path:
    """``root/name`` resolved, refusing absolute names and paths that escape ``root``.

    Args:
        root: the image directory.
        name: a relative file name as listed in the data (CSV cell, folder entry).
        where: location for the error message, e.g. ``"train.csv row 12, column 'id'"``.

    Raises:
        DataError: the name is absolute or resolves outside ``root``.
    """
    at = f" ({where})" if where else ""
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")):
        raise DataError(f"image path {name!r}{at} must be relative to {root}")
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise DataError(f"image path {name!r}{at} escapes the image directory {base}")
    return path


def load_image(
    path: str | os.PathLike,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    where: str = "",
) -> Tensor:
    """Decode one image file into a uint8 ``(C, H, W)`` tensor.

    Args:
        path: image file.
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps 1 for grayscale files, else RGB.
        size: (height, width) to resize to (antialiased bilinear), or ``None`` to keep.
        where: location for error messages (CSV row/column).

    Raises:
        DataError: missing, unreadable, truncated or corrupt file (names the file).
    """
    at = f" ({where})" if where else ""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file not found: {p}{at}")
    try:
        with Image.open(p) as img:
            img.load()  # force a full decode: truncated files fail here, not mid-epoch
            mode = img.mode
            if channels is None:
                channels = 1 if mode in ("1", "L", "I;16", "I", "F") else 3
            t = TF.pil_to_tensor(img.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {p}{at}: {e}") from None
    if size is not None and tuple(t.shape[1:]) != tuple(size):
        t = TF.resize(t, list(size), antialias=True)
    return t.contiguous()


def stack_images(images: list[Tensor]) -> Tensor:
    """Stack equally sized uint8 ``(C, H, W)`` tensors into ``(N, C, H, W)``."""
    if not images:
        return torch.empty(0, 1, 1, 1, dtype=torch.uint8)
    return torch.stack(images)
