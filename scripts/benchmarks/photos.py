"""Photos: crop-then-decode on generated ~3 MP and ~12 MP JPEG class folders (no download).

- decoders, one image, one thread: PIL at each DCT scale (``Image.draft``), torchvision's
  ``decode_jpeg``/``decode_png``, and one training sample of each loader below;
- loaders, images/s with 2 workers (best of repeats, interleaved), plus the peak PSS of this
  process and its workers while each runs: ``data.loading=stream`` (random_resized_crop 224),
  the memory path's set-up decode (2 threads, 224x224), a plain ``ImageFolder`` +
  ``RandomResizedCrop(224)`` + ``DataLoader``, and the same with a careful user's ``Image.draft``;
- whole-process wall time of a short training run: ``src/train.py data.loading=stream`` (seed
  CNN, 224 px, random_resized_crop, 2 workers) against ``_plain_train.py`` (the plain loop
  training the same net for the same epochs), interleaved;
- validation accuracy of the stream path decoding crop-first against the full-resolution
  decode it replaced (same run, same seed, in-process).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from make_photo_set import make_photo, make_photo_set
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.io import decode_jpeg, decode_png
from torchvision.transforms import v2

from benchmarks._common import compose_cfg
from benchmarks._plain_train import draft_loader
from benchmarks.streaming import tree_pss_kb
from imgcls.data.decode import decode_images
from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.data.images import decode_image
from imgcls.engine.streaming.loader import StreamOptions, train_decoder
from imgcls.utils.config import project_root

SIZE, BATCH, WORKERS = 224, 32, 2
SETS = {"3 MP": (2048, 1536), "12 MP": (4000, 3000)}


def _best_ms(fn: Callable[[], object], n: int) -> float:
    fn()
    best = math.inf
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def _raw(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def _pil(path: Path, scale: int) -> Callable[[], object]:
    def run() -> object:
        with Image.open(path) as im:
            im.draft("RGB", (im.width // scale, im.height // scale))  # a no-op for PNG
            im.load()
            return im.size

    return run


def _decoder_row(tmp: Path, w: int, h: int, n: int) -> dict[str, float]:
    img = make_photo(w, h, 0, seed=7)
    jpg, png = tmp / f"{w}.jpg", tmp / f"{w}.png"
    img.save(jpg, quality=90)
    img.save(png)
    stream = train_decoder(StreamOptions("random_resized_crop"), (SIZE, SIZE), 3)
    plain = T.Compose([T.RandomResizedCrop(SIZE), T.PILToTensor()])
    cells = {f"PIL draft 1/{s}": _best_ms(_pil(jpg, s), n) for s in (1, 2, 4, 8)}
    cells["torchvision decode_jpeg"] = _best_ms(lambda: decode_jpeg(_raw(jpg)), n)
    cells["sample: plain ImageFolder + RRC"] = _best_ms(
        lambda: plain(Image.open(jpg).convert("RGB")), n
    )
    cells["sample: plain + careful draft"] = _best_ms(lambda: plain(draft_loader(str(jpg))), n)
    cells["sample: stream (crop, then decode)"] = _best_ms(lambda: stream(jpg), n)
    cells["sample: memory set-up (224x224)"] = _best_ms(
        lambda: decode_image(jpg, 3, (SIZE, SIZE)), n
    )
    cells["PNG: PIL"] = _best_ms(_pil(png, 1), max(3, n // 4))
    cells["PNG: torchvision decode_png"] = _best_ms(lambda: decode_png(_raw(png)), max(3, n // 4))
    cells["JPEG MB"] = jpg.stat().st_size / 1e6
    return cells


def decoders(tmp: Path, n: int) -> list[str]:
    """One image, one thread, best of ``n``: decoders and one training sample of each loader."""
    torch.set_num_threads(1)
    rows = {name: _decoder_row(tmp, w, h, n) for name, (w, h) in SETS.items()}
    lines = [f"Per image, one thread, best of {n} (ms):", "", "| | " + " | ".join(rows) + " |"]
    lines.append("|---" * (len(rows) + 1) + "|")
    for k in next(iter(rows.values())):
        lines.append(f"| {k} | " + " | ".join(f"{r[k]:.1f}" for r in rows.values()) + " |")
    return lines


class PeakPss:
    """Peak PSS (MB) of this process and its children while the block runs."""

    def __enter__(self) -> PeakPss:
        self.peak, self._stop = 0, False
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self) -> None:
        while not self._stop:
            kb = tree_pss_kb(os.getpid())
            self.peak = max(self.peak, sum(kb.values()) if kb else 0)
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._t.join()
        self.peak_mb = self.peak / 1024


def _epoch(loader: DataLoader) -> int:
    return sum(len(batch[1]) for batch in loader)


def loaders(root: Path, repeats: int) -> list[str]:
    """images/s of one epoch of each loader (2 workers), interleaved, best of ``repeats``."""
    dm = FolderDataModule(
        root=str(root), image_size=[SIZE, SIZE], channels=3, loading="stream",
        num_workers=WORKERS, batch_size=BATCH, mean=[0.5] * 3, std=[0.25] * 3,
        stream={"train_crop": "random_resized_crop"},
    )  # fmt: skip
    dm.setup()
    tf = T.Compose([T.RandomResizedCrop(SIZE), T.PILToTensor()])
    opts = dict(batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True)
    plain = DataLoader(ImageFolder(str(root / "train"), tf), **opts)
    careful = DataLoader(ImageFolder(str(root / "train"), tf, loader=draft_loader), **opts)
    paths = sorted((root / "train").rglob("*.jpg"))
    runs: dict[str, Callable[[], int]] = {
        "plain ImageFolder + RandomResizedCrop(224)": lambda: _epoch(plain),
        "plain + Image.draft (careful user)": lambda: _epoch(careful),
        "data.loading=stream (random_resized_crop)": lambda: _epoch(dm.train_dataloader()),
        "memory path set-up decode (2 threads, 224x224)": lambda: len(
            decode_images(paths, 3, (SIZE, SIZE), threads=WORKERS)[0]
        ),
    }
    for fn in runs.values():  # warm-up: workers start, page cache
        fn()
    best = {k: math.inf for k in runs}
    peak = {k: 0.0 for k in runs}
    n = len(paths)
    for _ in range(repeats):
        for k, fn in runs.items():
            with PeakPss() as p:
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
            peak[k] = max(peak[k], p.peak_mb)
    base = n / best[next(iter(runs))]
    lines = ["| loader | images/s | x plain | peak PSS (MB) |", "|---|---|---|---|"]
    for k in runs:
        lines.append(f"| {k} | {n / best[k]:.0f} | {n / best[k] / base:.2f} | {peak[k]:.0f} |")
    return lines


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[1]} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def stream_cmd(root: Path, epochs: int, log_dir: Path) -> list[str]:
    return [
        sys.executable, str(project_root() / "src" / "train.py"), "data=folder",
        f"data.root={root}", f"data.image_size=[{SIZE},{SIZE}]", "data.loading=stream",
        "data.stream.train_crop=random_resized_crop", f"data.num_workers={WORKERS}",
        "model=simple_cnn", f"trainer.max_epochs={epochs}", f"paths.log_dir={log_dir}",
    ]  # fmt: skip


def training(root: Path, epochs: int, repeats: int, tmp: Path) -> list[str]:
    """Whole-process wall time: src/train.py (stream) against the plain loop, interleaved."""
    plain_cmd = [
        sys.executable,
        str(Path(__file__).with_name("_plain_train.py")),
        str(root),
        str(epochs),
    ]
    walls: dict[str, list[float]] = {"plain": [], "stream": []}
    acc: dict[str, str] = {}
    for _ in range(repeats):
        wall, out = _run(plain_cmd)
        walls["plain"].append(wall)
        acc["plain"] = f"{json.loads(out.strip().splitlines()[-1])['val_acc']:.3f}"
        wall, out = _run(stream_cmd(root, epochs, tmp / "logs"))
        walls["stream"].append(wall)
        run_dir = Path(re.findall(r"run dir: (\S+)", out)[-1])
        summary = json.loads((run_dir / "metrics.json").read_text())
        acc["stream"] = f"{summary['metrics']['val/acc']:.3f}"  # the last epoch's, as plain's
    best = {k: min(v) for k, v in walls.items()}
    show = lambda k: ", ".join(f"{w:.1f}" for w in walls[k])  # noqa: E731
    return [
        "| run | wall s (each run) | best | val acc (last run) |",
        "|---|---|---|---|",
        f"| plain ImageFolder + RandomResizedCrop loop | {show('plain')} | {best['plain']:.1f} | {acc['plain']} |",
        f"| src/train.py data.loading=stream | {show('stream')} | {best['stream']:.1f} | {acc['stream']} |",
        f"| **ratio stream / plain** | | **{best['stream'] / best['plain']:.2f}** | |",
    ]


class FullDecoder:
    """The stream path before crop-then-decode: full-size decode, then torchvision v2 on it."""

    def __init__(self, channels: int, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.channels, self.transform = channels, transform

    def __call__(self, path: object, data: bytes | None = None) -> torch.Tensor:
        return self.augment(self.decode(path, data))

    def decode(self, path: object, data: bytes | None = None, view: object = None) -> torch.Tensor:
        return torch.from_numpy(decode_image(path, self.channels, data=data)).permute(2, 0, 1)  # type: ignore[arg-type]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x).contiguous()

    def drawn_view(self, path: object) -> None:  # the crop is drawn by ``transform``
        return None


def accuracy(root: Path, epochs: int, seeds: list[int], tmp: Path) -> list[str]:
    """val/acc of the stream path, crop-first decode vs the full decode, same seeds."""
    from imgcls.engine.streaming import splits as stream_splits
    from imgcls.tasks.train import train

    new_train, new_eval = stream_splits.train_decoder, stream_splits.eval_decoder

    def old_train(opts, size, channels):  # noqa: ANN001, ANN202
        crop = v2.RandomResizedCrop(list(size), opts.scale, opts.ratio, antialias=True)
        return FullDecoder(channels, crop)

    def old_eval(desc, channels):  # noqa: ANN001, ANN202
        return FullDecoder(channels, v2.Resize(desc["resize"], antialias=True))

    lines = [
        "| seed | val/acc full decode (before) | val/acc crop-then-decode (now) |",
        "|---|---|---|",
    ]
    try:
        for seed in seeds:
            res = []
            for i, (tr, ev) in enumerate(((old_train, old_eval), (new_train, new_eval))):
                stream_splits.train_decoder, stream_splits.eval_decoder = tr, ev
                over = stream_cmd(root, epochs, tmp / "logs")[2:] + [f"seed={seed}", "logger=none"]
                res.append(train(compose_cfg(over, tmp / f"acc{seed}_{i}")).get("val/acc_best"))
            lines.append(f"| {seed} | {float(res[0]):.3f} | {float(res[1]):.3f} |")
    finally:
        stream_splits.train_decoder, stream_splits.eval_decoder = new_train, new_eval
    return lines


def run(args) -> Iterator[str]:  # noqa: ANN001
    """Yields its lines as each part ends (the runner prints them at once)."""
    quick = args.quick
    repeats = 1 if quick else args.repeats
    yield f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)"
    with tempfile.TemporaryDirectory(prefix="bench_photos_") as d:
        tmp = Path(d)
        yield from ["", *decoders(tmp, 3 if quick else 15)]
        for name, size in SETS.items():
            n = (32 if quick else 64) if name == "12 MP" else (64 if quick else 160)
            root = make_photo_set(tmp / name.replace(" ", ""), size, n, 8)
            yield f"\n{name}: {n} JPEGs of {size[0]}x{size[1]}, batch {BATCH}, {WORKERS} workers, "
            yield f"one epoch, best of {repeats}, load {os.getloadavg()[0]:.1f}:\n"
            yield from loaders(root, repeats)
        n, epochs = (64, 1) if quick else (400, 2)
        roots = {}
        for name, n_train in {"3 MP": n, "12 MP": n * 2 // 5}.items():
            at = tmp / f"train_{name.replace(' ', '')}"
            roots[name] = make_photo_set(at, SETS[name], n_train, n_train // 4, seed=1)
            yield f"\nTraining, {n_train} + {n_train // 4} JPEGs of {name}, 4 classes, {epochs} "
            yield f"epochs, seed CNN at {SIZE} px, 2 workers, load {os.getloadavg()[0]:.1f}:\n"
            yield from training(roots[name], epochs, repeats, tmp)
        root = roots["3 MP"]
        yield f"\nAccuracy, same set, {2 * epochs + 2} epochs, in-process:\n"
        yield from accuracy(root, 2 * epochs + 2, [1] if quick else [1, 2], tmp)
    yield f"\nload average at end: {os.getloadavg()[0]:.1f}"
