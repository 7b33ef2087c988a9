"""Cost of the data checks (``data.checks``) against the set-up they run in.

A folder set of tinted 64x64 JPEG digits (6,000; ``--quick`` 1,200) with planted copies, set up
with ``leakage=off`` and ``warn`` interleaved (best of the repeats), on the memory path (hashes
from the decoded tensor) and the stream path (one small decode per file); MNIST with its saved
report removed (first run) and present (every later run)."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.data.mnist_datamodule import MNISTDataModule, ensure_mnist_raw
from imgcls.utils.config import project_root


def _make_set(root: Path, n: int) -> None:
    from torchvision.datasets import MNIST

    data = project_root() / "data"
    ensure_mnist_raw(data)
    mnist = MNIST(str(data), train=True)
    for i in range(n):
        split = "train" if i < 0.8 * n else "valid" if i < 0.9 * n else "test"
        src = mnist.data[
            i % 1000 if i % 50 == 7 else i
        ].numpy()  # every 50th: a copy of a train image
        im = Image.fromarray(src).resize((64, 64)).convert("RGB")
        rgb = (np.array(im) * np.array([1.0, 0.5 + (i % 5) / 10, 0.8])).astype(np.uint8)
        d = root / split / str(int(mnist.targets[i]))
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        (d / f"{i}.jpg").write_bytes(buf.getvalue())


def _setup(make) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    dm = make()
    t0 = time.perf_counter()
    dm.setup()
    checks = dm.check_report.seconds if dm.check_report is not None else 0.0
    return time.perf_counter() - t0, checks


def _compare(label: str, make_off, make_on, repeats: int) -> list[str]:  # type: ignore[no-untyped-def]
    off, on, checks = [], [], []
    for _ in range(repeats):
        off.append(_setup(make_off)[0])
        total, c = _setup(make_on)
        on.append(total)
        checks.append(c)
    base, c = min(off), min(checks)
    return [f"| {label} | {base:.2f} | {min(on):.2f} | {c:.2f} | {100 * c / base:.0f} % |"]


def run(args) -> list[str]:  # type: ignore[no-untyped-def]
    n = 1200 if args.quick else 6000
    lines = [
        f"{n} tinted 64x64 JPEG digits (folder), cache off; MNIST 55k/5k/10k. Best of {args.repeats}.",
        "",
        "| set-up | checks off (s) | checks on (s) | of which checks (s) | checks / set-up off |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_set(root, n)
        for loading in ("memory", "stream"):
            kw = dict(root=str(root), cache_dir=None, loading=loading, num_workers=2)
            lines += _compare(
                f"folder, {loading} path",
                lambda kw=kw: FolderDataModule(**kw, checks={"leakage": "off"}),
                lambda kw=kw: FolderDataModule(**kw),
                args.repeats,
            )
    data = str(project_root() / "data")

    class Fresh(MNISTDataModule):
        def checks_file(self) -> None:  # type: ignore[override]
            return None

    lines += _compare(
        "MNIST, first run", lambda: MNISTDataModule(data, checks={"leakage": "off"}),
        lambda: Fresh(data), args.repeats,
    )  # fmt: skip
    lines += _compare(
        "MNIST, saved report", lambda: MNISTDataModule(data, checks={"leakage": "off"}),
        lambda: MNISTDataModule(data), args.repeats,
    )  # fmt: skip
    return lines
