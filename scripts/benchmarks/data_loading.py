"""File sources: images/s of decoding per epoch vs the decode-once caches.

On digit datasets generated from MNIST (``scripts/make_digit_datasets.py``): 28x28 PNGs listed
in an ``id,label`` CSV, and 224x224 grayscale JPEGs shrunk 8x (the seed CNN's recipe). For each:

- per-epoch decoding, as the seed tutorials do (``Dataset`` opening files in ``__getitem__``,
  torchvision transforms, ``DataLoader`` with 0 and 2 workers);
- the first decode at set-up (no cache), the on-disk cache reload, and one epoch of batches
  from the decoded in-memory tensor (normalization included).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

import make_digit_datasets
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from imgcls.data.csv_datamodule import CSVDataModule


class PerItemDecode(Dataset):
    """The seed tutorials' way: open, convert and resize each file whenever it is fetched."""

    def __init__(self, files: list[Path], labels: list[int], size: tuple[int, int]) -> None:
        self.files, self.labels = files, labels
        self.tf = v2.Compose(
            [v2.Resize(size), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as img:
            return self.tf(img.convert("L")), self.labels[i]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _epoch(loader) -> int:
    n = 0
    for x, _ in loader:
        n += len(x)
    return n


def run(args) -> list[str]:
    repeats = 1 if args.quick else args.repeats
    n_train = 300 if args.quick else 5000
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    lines = []
    try:
        make_digit_datasets.main(
            ["--out", str(tmp), "--train", str(n_train), "--test", "50", "--forms", "csv,jpg"]
        )
        datasets = {
            "28x28 PNG, id,label CSV": dict(
                root=tmp / "digits_csv", train_csv="train.csv", image_dir="train"
            ),
            "224x224 JPEG -> 28x28 (/8), Image_Name,Lable CSV": dict(
                root=tmp / "digits_jpg",
                train_csv="labels.csv",
                image_dir="images",
                extension=".JPG",
                resize_factor=8,
            ),
        }
        lines += [
            f"{n_train} training images per dataset (val split included in set-up figures); best of {repeats}",
            "",
            "| dataset | path | images/s |",
            "|---|---|---|",
        ]
        cache = tmp / "cache"
        for name, opts in datasets.items():
            root = Path(opts["root"])
            common = dict(
                test_csv=None,
                channels=1,
                num_workers=2,
                batch_size=128,
                **{**opts, "root": str(root)},
            )
            with open(root / opts["train_csv"], newline="") as f:
                rows = list(csv.reader(f))[1:]
            ext = opts.get("extension") or ".png"
            files = [root / opts["image_dir"] / f"{r[0]}{ext}" for r in rows]
            labels = [int(r[1]) for r in rows]
            per_item = PerItemDecode(files, labels, (28, 28))
            for workers in (0, 2):
                loader = DataLoader(per_item, batch_size=128, shuffle=True, num_workers=workers)
                s = _best(lambda loader=loader: _epoch(loader), repeats)
                lines.append(
                    f"| {name} | decode every epoch (Dataset + DataLoader, {workers} workers) | {len(files) / s:,.0f} |"
                )

            s = _best(lambda c=common: CSVDataModule(cache_dir=None, **c).setup(), repeats)
            lines.append(
                f"| {name} | first decode at set-up (2 threads, no cache) | {len(files) / s:,.0f} |"
            )

            CSVDataModule(cache_dir=str(cache), **common).setup()  # fill the cache
            s = _best(lambda c=common: CSVDataModule(cache_dir=str(cache), **c).setup(), repeats)
            lines.append(
                f"| {name} | set-up from the on-disk cache (memory-mapped) | {len(files) / s:,.0f} |"
            )

            dm = CSVDataModule(cache_dir=None, **common)
            dm.setup()

            def epoch(dm=dm) -> int:
                n = 0
                for batch in dm.train_dataloader():
                    x, _ = dm.on_after_batch_transfer(batch, 0)
                    n += len(x)
                return n

            n_tr = len(dm.splits["train"])
            s = _best(epoch, repeats)
            lines.append(
                f"| {name} | epoch from the decoded in-memory tensor (+ normalize) | {n_tr / s:,.0f} |"
            )
        lines.append("")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lines
