"""Photo-like JPEG class folders, generated (no download): ``<out>/train/<class>/*.jpg`` and
``<out>/valid/...``, for the photo benchmark and tests.

    python scripts/make_photo_set.py /tmp/photos --size 2048x1536 --train 400 --valid 100

Each image is a smooth colour gradient with a few blurred rectangles and ellipses, sensor-like
noise (so JPEG sizes are those of real photos: ~0.8 MB at 3 MP, ~2.9 MB at 12 MP, quality 90),
and one large disc whose hue names the class (``--classes`` hues around the colour wheel).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_photo(width: int, height: int, label: int, seed: int, classes: int = 4) -> Image.Image:
    """One RGB photo-like image of class ``label`` (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    sw, sh = max(8, width // 16), max(8, height // 16)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    base = np.zeros((sh, sw, 3), np.float32)
    for c in range(3):
        a, b, c0 = rng.uniform(-1, 1, 3)
        base[..., c] = 128 + 60 * (a * xx / sw + b * yy / sh) + 40 * c0
    small = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(small)
    for k in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(-0.1, 0.9) * sw, rng.uniform(-0.1, 0.9) * sh
        r = rng.uniform(0.1, 0.4) * min(sw, sh)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if k % 2 else draw.rectangle
        shape([x0, y0, x0 + r, y0 + r * rng.uniform(0.5, 1.5)], fill=colour)
    hue = (label * 360 // classes + int(rng.integers(-15, 16))) % 360
    cx, cy = rng.uniform(0.3, 0.7) * sw, rng.uniform(0.3, 0.7) * sh
    r = rng.uniform(0.2, 0.35) * min(sw, sh)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=f"hsv({hue},80%,90%)")
    img = small.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def make_photo_set(
    out: Path, size: tuple[int, int], train: int, valid: int, classes: int = 4, seed: int = 0
) -> Path:
    """``train`` + ``valid`` JPEGs of ``size`` (width, height), classes balanced; returns ``out``."""
    jobs = [("train", i) for i in range(train)] + [("valid", i) for i in range(valid)]

    def one(job: tuple[str, int]) -> None:
        split, i = job
        label = i % classes
        path = out / split / f"class{label}" / f"{split}_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        offset = 0 if split == "train" else 1_000_000
        make_photo(*size, label, seed * 10_000_000 + offset + i, classes).save(path, quality=90)

    with ThreadPoolExecutor(2) as pool:  # numpy and PIL release the GIL
        list(pool.map(one, jobs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="2048x1536", help="WIDTHxHEIGHT")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--valid", type=int, default=100)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    make_photo_set(a.out, (w, h), a.train, a.valid, a.classes, a.seed)
    print(f"wrote {a.train} + {a.valid} JPEGs of {w}x{h} to {a.out}")


if __name__ == "__main__":
    main()
