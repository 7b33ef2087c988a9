"""How an image file becomes a uint8 tensor (decode, channels, resize), decided in one place:
training data and the images a checkpoint later predicts on are decoded identically."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
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


# PIL's filters by the names of ``data.stream.interpolation``
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
Box = tuple[float, float, float, float]  # left, top, right, bottom in the file's own pixels
# the opened (not yet decoded) image -> the box the model sees (None: all of it) and its (h, w)
View = Callable[[Image.Image], tuple[Box | None, tuple[int, int]]]


def draft_scale(box: Box, out_hw: Sequence[int]) -> int:
    """The largest JPEG DCT reduction (8, 4, 2, else 1) that keeps ``box`` at or above the
    output size: decoding then costs ~1/s^2 of the pixels and never upsamples."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    return next((s for s in (8, 4, 2) if s * out_hw[1] <= bw and s * out_hw[0] <= bh), 1)


def center_box(resize: int | Sequence[int], crop: Sequence[int], native_wh: Sequence[int]) -> Box:
    """torchvision's ``Resize(resize)`` then ``CenterCrop(crop)`` as the box they keep, in the
    file's own pixels (an int ``resize`` is the shorter side; rounding as torchvision's)."""
    w, h = native_wh
    if isinstance(resize, list | tuple):
        rh, rw = int(resize[0]), int(resize[1])
    else:
        short, long = (w, h) if w <= h else (h, w)
        rs = int(resize)  # type: ignore[arg-type]
        rl = int(rs * long / short)
        rw, rh = (rs, rl) if w <= h else (rl, rs)
    ch, cw = int(crop[0]), int(crop[1])
    if ch > rh or cw > rw:
        raise ConfigError(f"the center crop {ch}x{cw} is larger than the resized {rh}x{rw}")
    top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
    return (left * w / rw, top * h / rh, (left + cw) * w / rw, (top + ch) * h / rh)


def decode_image(
    path: str | os.PathLike,
    channels: int | None = None,
    image_size: Sequence[int] | None = None,
    resize_factor: int | None = None,
    data: bytes | None = None,
    view: View | None = None,
    resample: str = "bilinear",
) -> np.ndarray:
    """One file (or its encoded ``data``) -> uint8 ``(H, W, C)``; errors name the file.

    The one decode of both data paths and of predict/export: ``view`` (stream path) picks the
    box the model sees from the header size, else the whole image at ``image_size``. A JPEG
    decodes at the largest DCT scale keeping that box at or above the output size
    (``Image.draft``); one PIL resize then crops and shrinks it (antialiased)."""
    p = Path(path)
    if data is None and not p.is_file():
        raise DataError(f"image file not found: {p}")
    try:
        with Image.open(p if data is None else io.BytesIO(data)) as img:
            if channels is None:
                channels = 1 if img.mode in GRAY_MODES else 3
            mode = "L" if channels == 1 else "RGB"
            native = img.size
            if view is None:
                box = None
                h, w = target_size((img.height, img.width), image_size, resize_factor)
            else:
                box, (h, w) = view(img)
            full = (0.0, 0.0, float(native[0]), float(native[1]))
            s = draft_scale(box or full, (h, w))
            img.draft(mode, (native[0] // s, native[1] // s))  # JPEG only; a no-op for others
            img.load()  # a full decode: truncated files fail here, not mid-epoch
            out = img.convert(mode) if img.mode != mode else img
            if box is not None or out.size != (w, h):
                f = (out.width / native[0], out.height / native[1]) * 2
                x0, y0, x1, y1 = (v * k for v, k in zip(box or full, f, strict=True))
                out = out.resize((w, h), RESAMPLE[resample], box=(x0, y0, x1, y1))
            arr = np.array(out, dtype=np.uint8)  # writable: torch.from_numpy needs it
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {p}: {e}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


class EvalView:
    """A streamed checkpoint's eval transform (``resize`` then center ``crop``) as a ``View``."""

    def __init__(self, desc: Mapping[str, Any]) -> None:
        self.resize, self.crop = desc["resize"], (int(desc["crop"][0]), int(desc["crop"][1]))

    def __call__(self, img: Image.Image) -> tuple[Box | None, tuple[int, int]]:
        return center_box(self.resize, self.crop, img.size), self.crop


def decode_steps(
    channels: int, size: Sequence[int], eval_transform: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """What ``decode_image`` does to a file for a model input of ``channels`` x ``size``, as data.

    The export sidecar writes these steps down (then scale and normalize) so code outside this
    package can reproduce predict.py with PIL. Change this list and ``decode_image`` together:
    a test replays it against predict.py."""
    mode = "L" if channels == 1 else "RGB"
    h, w = int(size[0]), int(size[1])
    desc = eval_transform or {"resize": [h, w], "crop": [h, w], "interpolation": "bilinear"}
    resize, interp = desc["resize"], str(desc.get("interpolation", "bilinear"))
    how = (
        f"resize to height {resize[0]} x width {resize[1]}"
        if isinstance(resize, (list, tuple))
        else f"resize the shorter side to {resize} (longer: int({resize} * long / short))"
    )
    return [
        {"op": "open", "library": "PIL", "call": "img = Image.open(path); W, H = img.size"},
        {
            "op": "box",
            "call": f"{how}, then center-crop height {h} x width {w} (top = round((rh - {h}) / 2),"
            " left likewise); box = that crop in the file's pixels (left * W / rw, top * H / rh,"
            f" (left + {w}) * W / rw, (top + {h}) * H / rh)",
            "resize": list(resize) if isinstance(resize, (list, tuple)) else int(resize),
            "crop": [h, w],
        },
        {
            "op": "jpeg_draft",
            "call": f"img.draft({mode!r}, (W // s, H // s)), s the largest of 8, 4, 2 with "
            f"s * {w} <= box width and s * {h} <= box height, else 1 (a no-op for non-JPEGs)",
            "mode": mode,
            "why": "reduced-size DCT decode that keeps the box at or above the output size",
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
            "when": "the box is not the whole image or img.size differs from the output size",
            "call": f"img.resize(({w}, {h}), Image.Resampling.{interp.upper()}, box=box scaled "
            "by (img.width / W, img.height / H))",
            "size_hw": [h, w],
            "resample": interp,
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
