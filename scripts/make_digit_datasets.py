"""Build digit datasets from the bundled MNIST in the layouts researchers actually have.

    python scripts/make_digit_datasets.py                  # all three under data/
    python scripts/make_digit_datasets.py --train 2000 --forms csv --out /tmp/d

Forms (each in its own directory under --out):

- ``digits_csv``: ``train.csv`` (``id,label``) with ``train/<id>.png``; ``test.csv`` (``id`` only)
  with ``test/<id>.png``; ``test_truth.csv`` (``id,label``) holds the hidden test labels, to
  score predictions against.
- ``digits_jpg``: the seed tutorial's form: ``labels.csv`` (``Image_Name,Lable``) with
  ``images/<Image_Name>.JPG`` (no extension in the CSV, upper-case on disk), grayscale
  224x224 photos-to-be-shrunk (``data.resize_factor=8`` gives 28x28 again).
- ``digits_folder``: class folders ``train/<digit>/`` and ``valid/<digit>/``, RGB digits in
  random colours on random dark backgrounds, mixed sizes (28..48 px per side), PNG and JPEG.

Images are the first ``--train`` of a seeded permutation of MNIST's training set and the
first ``--test`` of its test set: the same arguments always give the same files. Each
dataset is written to a temporary directory and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

FORMS = ("csv", "jpg", "folder")


def load_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8/int64 arrays."""
    from torchvision.datasets import MNIST

    from imgcls.data.mnist_datamodule import ensure_mnist_raw

    ensure_mnist_raw(data_dir)
    tr = MNIST(str(data_dir), train=True, download=False)
    te = MNIST(str(data_dir), train=False, download=False)
    return tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _parallel(fn: Callable[[int], None], n: int, threads: int) -> None:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, range(n)))


def build_csv(dst: Path, tr_x, tr_y, te_x, te_y, threads: int) -> None:
    """``id,label`` CSV with ``train/<id>.png`` and a label-less ``test.csv``."""
    (dst / "train").mkdir(parents=True)
    (dst / "test").mkdir()
    n_tr = len(tr_x)
    # ids as in Kaggle-style sets: unique integers, test ids continue after train ids
    _parallel(
        lambda i: Image.fromarray(tr_x[i]).save(dst / "train" / f"{i + 1}.png"), n_tr, threads
    )
    _parallel(
        lambda i: Image.fromarray(te_x[i]).save(dst / "test" / f"{n_tr + i + 1}.png"),
        len(te_x),
        threads,
    )
    _write_csv(dst / "train.csv", ["id", "label"], [[i + 1, int(y)] for i, y in enumerate(tr_y)])
    _write_csv(dst / "test.csv", ["id"], [[n_tr + i + 1] for i in range(len(te_x))])
    _write_csv(
        dst / "test_truth.csv",
        ["id", "label"],
        [[n_tr + i + 1, int(y)] for i, y in enumerate(te_y)],
    )


def build_jpg(dst: Path, tr_x, tr_y, threads: int, scale: int = 8) -> None:
    """The seed's ``Image_Name,Lable`` CSV with ``images/<Image_Name>.JPG`` grayscale photos."""
    (dst / "images").mkdir(parents=True)

    def save(i: int) -> None:
        img = Image.fromarray(tr_x[i]).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
        img.save(dst / "images" / f"IMG_{i + 1:05d}.JPG", quality=90)

    _parallel(save, len(tr_x), threads)
    _write_csv(
        dst / "labels.csv",
        ["Image_Name", "Lable"],
        [[f"IMG_{i + 1:05d}", int(y)] for i, y in enumerate(tr_y)],
    )


def _colour_digit(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A digit in a random bright colour on a random dark background, at a random size."""
    alpha = x.astype(np.float32)[..., None] / 255.0
    fg = rng.uniform(150, 255, size=3)
    bg = rng.uniform(0, 90, size=3)
    rgb = (bg * (1 - alpha) + fg * alpha).clip(0, 255).astype(np.uint8)
    h, w = (int(s) for s in rng.integers(28, 49, size=2))
    return Image.fromarray(rgb, "RGB").resize((w, h), Image.Resampling.BILINEAR)


def build_folder(dst: Path, tr_x, tr_y, te_x, te_y, threads: int, seed: int) -> None:
    """``train/<digit>/`` and ``valid/<digit>/`` of RGB, mixed-size PNG and JPEG files."""
    for k, (split, xs, ys) in enumerate((("train", tr_x, tr_y), ("valid", te_x, te_y))):
        for d in range(10):
            (dst / split / str(d)).mkdir(parents=True)
        rngs = np.random.default_rng([seed, k]).spawn(len(xs))

        def save(i: int, split=split, xs=xs, ys=ys, rngs=rngs) -> None:
            img = _colour_digit(xs[i], rngs[i])
            ext = ".png" if i % 2 == 0 else ".jpg"
            img.save(dst / split / str(int(ys[i])) / f"{split}_{i + 1:05d}{ext}", quality=92)

        _parallel(save, len(xs), threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root = Path(__file__).resolve().parents[1]
    parser.add_argument(
        "--out", type=Path, default=root / "data", help="parent directory (default: data/)"
    )
    parser.add_argument(
        "--mnist-dir", type=Path, default=root / "data", help="directory holding MNIST/raw"
    )
    parser.add_argument("--train", type=int, default=5000, help="training images per dataset")
    parser.add_argument("--test", type=int, default=1000, help="test (csv) / valid (folder) images")
    parser.add_argument(
        "--forms", default=",".join(FORMS), help=f"comma-separated subset of {FORMS}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--force", action="store_true", help="replace existing datasets")
    args = parser.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    if unknown := sorted(set(forms) - set(FORMS)):
        parser.error(f"unknown form(s) {unknown}; choose from {FORMS}")

    sys.path.insert(0, str(root / "src"))  # run from a checkout without installing
    tr_x, tr_y, te_x, te_y = load_mnist(args.mnist_dir)
    if not (0 < args.train <= len(tr_x) and 0 < args.test <= len(te_x)):
        parser.error(f"--train must be in 1..{len(tr_x)} and --test in 1..{len(te_x)}")
    rng = np.random.default_rng(args.seed)
    tr = rng.permutation(len(tr_x))[: args.train]
    te = rng.permutation(len(te_x))[: args.test]
    tr_x, tr_y, te_x, te_y = tr_x[tr], tr_y[tr], te_x[te], te_y[te]

    builders = {
        "csv": lambda d: build_csv(d, tr_x, tr_y, te_x, te_y, args.threads),
        "jpg": lambda d: build_jpg(d, tr_x, tr_y, args.threads),
        "folder": lambda d: build_folder(d, tr_x, tr_y, te_x, te_y, args.threads, args.seed),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for form in forms:
        final = args.out / f"digits_{form}"
        if final.exists() and not args.force:
            print(f"{final} exists; keeping it (--force to rebuild)")
            continue
        t0 = time.perf_counter()
        tmp = args.out / f".digits_{form}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            builders[form](tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{final}: built in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
