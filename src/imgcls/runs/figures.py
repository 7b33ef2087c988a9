"""Every figure of the package, drawn with matplotlib's Agg canvas (no pyplot, no global backend
state, no display): confusion matrices (TensorBoard and report.html), training curves, the sweep
comparison; image grids are pasted with PIL. matplotlib is imported inside the functions, so a
run imports it only when it draws."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def new_figure(width: float, height: float) -> Any:
    """A Figure on its own Agg canvas (safe in threads and headless processes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def png_tensor(png: bytes) -> Tensor:
    """uint8 ``(3, H, W)`` of a PNG (what ``SummaryWriter.add_image`` takes)."""
    from torchvision.io import ImageReadMode, decode_png

    return decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8), ImageReadMode.RGB)


def confusion_figure(cm: Tensor | Sequence[Sequence[int]], names: Sequence[str], title: str = ""):
    """Rows true class, columns predicted; cells colored by the row-normalized fraction (per-class
    recall on the diagonal, so rare classes read as well as frequent ones), counts printed while
    the cells are big enough, class names while they fit."""
    counts = torch.as_tensor(cm, dtype=torch.float64)
    k = counts.shape[0]
    frac = counts / counts.sum(1, keepdim=True).clamp(min=1)
    side = min(4.0 + 0.32 * k, 18.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    ticks = list(range(k)) if k <= 60 else []
    labels = [str(names[i])[:18] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90 if k > 10 else 0, fontsize=8 if k > 20 else 10)
    ax.set_yticks(ticks, labels, fontsize=8 if k > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j] > 0:
                    color = "white" if frac[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=color)
    return fig


def confusion_matrix_image(cm: Tensor, class_names: Sequence[str], title: str = "") -> Tensor:
    """The confusion matrix as a uint8 ``(3, H, W)`` image for TensorBoard."""
    return png_tensor(png_bytes(confusion_figure(cm.detach().cpu(), class_names, title)))


def to_display_uint8(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``normalize``: float ``(N, C, H, W)`` -> uint8 RGB ``(N, 3, H, W)`` for viewing."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (images.detach().float().cpu() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def image_grid(
    images: Tensor, captions: Sequence[str], columns: int = 8, tile: int = 120
) -> Tensor:
    """uint8 ``(N, 3, H, W)`` images as a uint8 ``(3, H, W)`` grid, each scaled into a ``tile``
    px square with its caption (up to two lines) under it. PIL, not matplotlib subplots: 32
    tiles take ~40 ms where subplots took 0.75 s at the end of every validation epoch."""
    from PIL import Image, ImageDraw, ImageFont

    n, pad, line = len(images), 6, 13
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    cell_w, cell_h = tile + pad, tile + 2 * line + pad
    canvas = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=11)
    for idx in range(n):
        row, col = divmod(idx, columns)
        x0, y0 = pad + col * cell_w, pad + row * cell_h
        img = Image.fromarray(images[idx].permute(1, 2, 0).contiguous().numpy())
        f = tile / max(img.size)
        size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
        how = Image.Resampling.NEAREST if f >= 1 else Image.Resampling.BILINEAR
        canvas.paste(img.resize(size, how), (x0 + (tile - size[0]) // 2, y0 + tile - size[1]))
        text = "\n".join(ln[: tile // 6] for ln in str(captions[idx]).splitlines()[:2])
        draw.multiline_text((x0 + tile // 2, y0 + tile + 2), text, "black", font, "ma", 1, "center")
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()


def curves_figure(history: Sequence[Mapping[str, float]]) -> Any:
    """Loss and accuracy per epoch, train and val, from the rows of ``epochs.jsonl``."""
    panels = (
        ("loss", ("train/loss_epoch", "train"), ("val/loss", "val")),
        ("accuracy", ("train/acc", "train"), ("val/acc", "val")),
    )
    fig = new_figure(10, 3.6)
    for n, (title, *series) in enumerate(panels):
        ax = fig.add_subplot(1, 2, n + 1)
        for key, label in series:
            points = [(r["epoch"], r[key]) for r in history if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    return fig


def comparison_figure(
    names: Sequence[str], values: Sequence[Sequence[float]], ci: Sequence[tuple], label: str
) -> Any:
    """One row per configuration: its jobs' values as dots, the mean with its 95 % interval."""
    k = len(names)
    fig = new_figure(9, 1.2 + 0.45 * k)
    ax = fig.add_subplot()
    for i, (vals, (mean, half)) in enumerate(zip(values, ci, strict=True)):
        ax.scatter(vals, [i] * len(vals), color="tab:gray", s=18, zorder=2)
        if mean is not None:
            err = [[half or 0.0], [half or 0.0]]
            ax.errorbar([mean], [i], xerr=err, fmt="D", color="tab:blue", capsize=4, zorder=3)
    ax.set_yticks(range(k), [n if len(n) <= 60 else n[:57] + "..." for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} (dots: jobs; diamond: mean, bar: 95 % CI)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def reliability_figure(bins: Tensor, stage: str) -> Any:
    """Accuracy per confidence bin against the diagonal, from ``(count, conf sum, correct sum)``
    rows (equal-width bins, as ``MulticlassCalibrationError``)."""
    count, conf, correct = bins.double()
    n_bins = count.numel()
    seen = count > 0
    acc = torch.where(seen, correct / count.clamp(min=1), torch.zeros_like(count))
    mean_conf = torch.where(seen, conf / count.clamp(min=1), torch.zeros_like(count))
    ece = float(((mean_conf - acc).abs() * count).sum() / count.sum().clamp(min=1))
    fig = new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    edges = torch.linspace(0, 1, n_bins + 1)[:-1].tolist()
    ax.bar(edges, acc.tolist(), width=1 / n_bins, align="edge", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"{stage} reliability (ECE {ece:.4f}, {int(count.sum())} images)", fontsize=9)
    ax.legend(loc="upper left")
    return fig
