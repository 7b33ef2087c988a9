"""Pictures for TensorBoard drawn with PIL (a confusion matrix, a captioned image grid): PIL
comes with torchvision; matplotlib would be a heavy extra dependency for two simple figures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
# Light-to-dark blue ramp (like matplotlib's "Blues") for 0..1 fractions.
_LIGHT = torch.tensor([247.0, 251.0, 255.0])
_DARK = torch.tensor([8.0, 48.0, 107.0])


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` shortened with an ellipsis so that it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def blues(fraction: Tensor) -> Tensor:
    """RGB colors (``(..., 3)`` uint8) for fractions in [0, 1]."""
    f = fraction.clamp(0, 1).unsqueeze(-1).float()
    return (_LIGHT + (_DARK - _LIGHT) * f).round().to(torch.uint8)


def confusion_matrix_image(cm: Tensor, class_names: Sequence[str], title: str = "") -> Tensor:
    """Render a confusion matrix (rows = true class, columns = predicted) as a uint8 ``(3, H, W)``.

    Cells are colored by the row-normalized fraction (per-class recall on the diagonal), so rare
    classes read as well as frequent ones; counts are printed when the cells are big enough."""
    cm = cm.detach().cpu().long()
    k = cm.shape[0]
    cell = max(6, min(36, 720 // max(k, 1)))
    show_counts = cell >= 22
    show_names = cell >= 10
    font = _font(max(8, min(14, cell - 4)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [str(n) for n in class_names]
    widest = max(probe.textlength(n, font=font) for n in names) if show_names else -8
    label_w = int(min(160, widest + 8))
    title_h = 22 if title else 0
    left, top = label_w + 18, title_h + label_w + 18
    width, height = left + k * cell + 8, top + k * cell + 8
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 4), title, fill=BLACK, font=_font(14))
    rows = cm.sum(1, keepdim=True).clamp(min=1)
    colors = blues(cm.double() / rows)
    frac = cm.double() / rows
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell, top + i * cell
            fill = tuple(colors[i, j].tolist())
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=fill)
            if show_counts and cm[i, j] > 0:
                text = _fit(draw, str(int(cm[i, j])), font, cell - 2)
                ink = WHITE if frac[i, j] > 0.5 else BLACK
                draw.text((x0 + cell / 2, y0 + cell / 2), text, fill=ink, font=font, anchor="mm")
    draw.rectangle([left - 1, top - 1, left + k * cell, top + k * cell], outline=BLACK)
    small = _font(11)
    draw.text((2, top + k * cell / 2), "true", fill=BLACK, font=small, anchor="lm")
    draw.text((left + k * cell / 2, title_h + 2), "predicted", fill=BLACK, font=small, anchor="mt")
    if show_names:
        for i, name in enumerate(names):
            short = _fit(draw, name, font, label_w - 6)
            row_y = top + i * cell + cell / 2
            draw.text((left - 4, row_y), short, fill=BLACK, font=font, anchor="rm")
            # column labels: text drawn on a strip, rotated to read bottom-up
            strip = Image.new("RGB", (label_w, cell), WHITE)
            ImageDraw.Draw(strip).text((2, cell / 2), short, fill=BLACK, font=font, anchor="lm")
            img.paste(strip.rotate(90, expand=True), (left + i * cell, top - label_w - 2))
    return TF.pil_to_tensor(img)


def to_display_uint8(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``normalize``: float ``(N, C, H, W)`` -> uint8 RGB ``(N, 3, H, W)`` for viewing."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (images.detach().float().cpu() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def captioned_grid(
    images: Tensor, captions: Sequence[str], tile: int = 96, columns: int = 8
) -> Tensor:
    """Tile uint8 ``(N, 3, H, W)`` images (scaled to ``tile`` px) with a caption under each."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    font = _font(11)
    cap_h, pad = 30, 4
    w, h = columns * (tile + pad) + pad, rows * (tile + cap_h + pad) + pad
    grid = Image.new("RGB", (w, h), WHITE)
    draw = ImageDraw.Draw(grid)
    for idx in range(n):
        r, c = divmod(idx, columns)
        x0, y0 = pad + c * (tile + pad), pad + r * (tile + cap_h + pad)
        im = images[idx]
        scale = tile / max(im.shape[1:])
        size = [max(1, round(im.shape[1] * scale)), max(1, round(im.shape[2] * scale))]
        # nearest keeps small digits crisp; antialiased bilinear suits photos being shrunk
        mode = TF.InterpolationMode.NEAREST if scale >= 1 else TF.InterpolationMode.BILINEAR
        im = TF.resize(im, size, interpolation=mode, antialias=scale < 1)
        grid.paste(TF.to_pil_image(im), (x0, y0))
        for line_no, line in enumerate(str(captions[idx]).split("\n")[:2]):
            text = _fit(draw, line, font, tile)
            draw.text((x0, y0 + tile + 2 + 13 * line_no), text, fill=BLACK, font=font)
    return TF.pil_to_tensor(grid)
