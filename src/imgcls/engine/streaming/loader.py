"""The stream path, for sets whose decoded pixels exceed ``data.memory_budget_mb``.

Each sample is decoded in a DataLoader worker, crop first: the training crop (torchvision's
``RandomResizedCrop`` statistics) or the eval center crop is chosen from the header size, and a
JPEG decodes at the largest DCT scale keeping it at or above the model size. It stays uint8 until
its batch is on the device, normalized there as on the memory path. The eval
transform is plain data (``DataSpec.eval_transform``) so predict/export rebuild it from a
checkpoint. A file failing mid-epoch never becomes a wrong label: its error travels with the batch
and the main process stops or skips (``DecodeErrors``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import RandomResizedCrop, v2

from imgcls.data.images import Box, EvalView, View, decode_image
from imgcls.data.tensor_dataset import batch_loader
from imgcls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LOADING_MODES = ("memory", "stream", "auto")
ERROR_MODES = ("stop", "skip")
AUTO_AUGMENTS = (None, "trivial", "randaugment")
TRAIN_CROPS = ("random_resized_crop", "resize")
_INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class StreamOptions:
    """``data.stream.*``. ``train_crop``: ``random_resized_crop`` (box drawn on the full image, the
    ImageNet recipe) or ``resize`` (as the memory path). ``eval_resize``: ``null`` resizes to
    ``image_size`` exactly; an int resizes the shorter side, then center-crops.
    ``mean_std_sample``: training images decoded to measure mean/std when not given."""

    train_crop: str = "resize"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    auto_augment: str | None = None
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    eval_resize: int | None = None
    interpolation: str = "bilinear"
    mean_std_sample: int = 256

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> StreamOptions:
        d = dict(cfg or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown data.stream option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}"
            )
        for key in ("scale", "ratio"):
            if key in d:
                d[key] = (float(d[key][0]), float(d[key][1]))
        opts = cls(**d)
        _one_of("stream.train_crop", opts.train_crop, TRAIN_CROPS)
        _one_of("stream.auto_augment", opts.auto_augment, AUTO_AUGMENTS)
        _one_of("stream.interpolation", opts.interpolation, tuple(_INTERPOLATIONS))
        return opts


def _one_of(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(f"data.{key} must be one of {shown}, got {value!r}")


def check_loading(loading: str, on_decode_error: str, memory_budget_mb: float) -> None:
    _one_of("loading", loading, LOADING_MODES)
    _one_of("on_decode_error", on_decode_error, ERROR_MODES)
    if float(memory_budget_mb) <= 0:
        raise ConfigError(f"data.memory_budget_mb must be positive, got {memory_budget_mb}")


def eval_transform_dict(opts: StreamOptions, image_size: tuple[int, int]) -> dict[str, Any]:
    """The eval transform as plain data (stored in the checkpoint's ``DataSpec``)."""
    h, w = image_size
    if opts.eval_resize is not None and int(opts.eval_resize) < max(h, w):
        raise ConfigError(
            f"data.stream.eval_resize={opts.eval_resize} is smaller than the image size {h}x{w} "
            "it is center-cropped to; set it to at least max(image_size) or null"
        )
    return {
        "resize": [h, w] if opts.eval_resize is None else int(opts.eval_resize),
        "crop": [h, w],
        "interpolation": opts.interpolation,
        "antialias": True,
    }


class TrainView:
    """The training crop chosen from the header size, before any pixel is decoded:
    torchvision's own ``RandomResizedCrop.get_params`` (same statistics, same RNG), or the
    whole image (``train_crop=resize``)."""

    def __init__(self, opts: StreamOptions, image_size: tuple[int, int]) -> None:
        self.size = (int(image_size[0]), int(image_size[1]))
        self.crop, self.scale, self.ratio = opts.train_crop, opts.scale, opts.ratio

    def __call__(self, img: Image.Image) -> tuple[Box | None, tuple[int, int]]:
        if self.crop != "random_resized_crop":
            return None, self.size
        i, j, h, w = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        return (j, i, j + w, i + h), self.size


class SampleDecoder:
    """A file (or a shard's bytes) -> uint8 ``(C, h, w)`` model input: ``decode_image`` through
    ``view`` (crop-then-decode), then the per-sample ``after`` transforms (flip, auto-augment)."""

    def __init__(self, channels: int, view: View, interpolation: str, after: Any = None) -> None:
        self.channels, self.view, self.after = int(channels), view, after
        self.resample = interpolation

    def __call__(
        self, path: str | Path, data: bytes | None = None, view: View | None = None
    ) -> Tensor:
        return self.augment(self.decode(path, data, view))

    def decode(
        self, path: str | Path, data: bytes | None = None, view: View | None = None
    ) -> Tensor:
        """The pixels through ``view`` (default: this decoder's), before ``after``."""
        view = view or self.view
        arr = decode_image(path, self.channels, data=data, view=view, resample=self.resample)
        return torch.from_numpy(arr).permute(2, 0, 1)

    def augment(self, image: Tensor) -> Tensor:
        return (image if self.after is None else self.after(image)).contiguous()

    def drawn_view(self, path: str | Path) -> View | None:
        """This decoder's view with its random draws made now, from the header (``None`` when
        the header does not open: the decode then names the error)."""
        try:
            with Image.open(path) as img:
                chosen = self.view(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None
        return lambda _img: chosen


def eval_decoder(desc: Mapping[str, Any], channels: int) -> SampleDecoder:
    """Resize (``[h, w]``, or an int for the shorter side), then center crop, decoded reduced."""
    return SampleDecoder(channels, EvalView(desc), str(desc.get("interpolation", "bilinear")))


def train_decoder(opts: StreamOptions, image_size: tuple[int, int], channels: int) -> SampleDecoder:
    """Per-sample training input: the crop (or resize), then flip and auto-augment."""
    interp = _INTERPOLATIONS[opts.interpolation]
    steps: list[Any] = []
    if opts.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(opts.hflip))
    if opts.auto_augment == "trivial":
        steps.append(v2.TrivialAugmentWide(interpolation=interp))
    elif opts.auto_augment == "randaugment":
        steps.append(
            v2.RandAugment(opts.randaugment_ops, opts.randaugment_magnitude, interpolation=interp)
        )
    after = v2.Compose(steps) if steps else None
    return SampleDecoder(channels, TrainView(opts, image_size), opts.interpolation, after)


@dataclass(frozen=True)
class StreamItem:
    """One listed file of a split: path, label index (-1: unlabeled), where it was listed."""

    path: Path
    label: int
    where: str


Sample = tuple[Tensor | None, int, str]  # image (None: failed), label, error


class StreamImageDataset(Dataset):
    """One file decoded per ``__getitem__``: ``(image, label, error)``, ``image`` ``None`` and
    ``error`` naming the file on a failure (``collate_stream`` separates those).

    A DataLoader hands each worker whole batches, so a worker left alone with an epoch's last
    batch (or the only one of a small split) decodes it on one core while the others idle.
    ``__getitems__`` decodes a batch on up to ``MAX_THREADS`` threads (PIL releases the GIL)
    instead: 2 epochs of 160 12 MP photos in batches of 128 fit in 9.5 s, not 12.6 (BENCHMARKS.md)."""

    MAX_THREADS = 4

    def __init__(self, items: Sequence[StreamItem], decode: SampleDecoder) -> None:
        self.items = list(items)
        self.decode = decode
        self.targets = torch.tensor([it.label for it in self.items], dtype=torch.long)
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        return self._sample(index)

    def _sample(self, index: int, view: View | None = None, augment: bool = True) -> Sample:
        item = self.items[index]
        try:
            image = self.decode.decode(item.path, view=view)
        except DataError as e:
            return None, item.label, f"{e} ({item.where})"
        return (self.decode.augment(image) if augment else image), item.label, ""

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The batch's random draws (crop boxes, then flips and augments) in index order in
        this thread, the decodes in threads: a seeded run repeats itself."""
        if len(indices) < 2:
            return [self._sample(i) for i in indices]
        # a pool per process: threads do not survive the fork into a loader worker
        if self._pool is None or self._pool[0] != os.getpid():
            cores = (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            )
            pool = ThreadPoolExecutor(min(self.MAX_THREADS, max(1, cores or 1)), "stream-decode")
            self._pool = (os.getpid(), pool)
        views = [self.decode.drawn_view(self.items[i].path) for i in indices]
        raw = self._pool[1].map(lambda i, v: self._sample(i, v, augment=False), indices, views)
        return [(None if x is None else self.decode.augment(x), y, e) for x, y, e in raw]

    def __getstate__(self) -> dict[str, Any]:  # spawned workers: a pool does not pickle
        return {**self.__dict__, "_pool": None}


def collate_stream(
    samples: list[tuple[Tensor | None, int, str]],
) -> tuple[Tensor, Tensor, list[str]]:
    """Stack the decoded samples; failed ones leave only their error message."""
    good = [(x, y) for x, y, _ in samples if x is not None]
    errors = [err for x, _, err in samples if x is None]
    if not good:
        return torch.empty(0, 1, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), errors
    xs, ys = zip(*good, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), errors


class DecodeErrors:
    """What the main process does with samples that failed to decode mid-epoch."""

    def __init__(self, mode: str, context: str) -> None:
        self.mode = mode
        self.context = context
        self.skipped: list[str] = []

    def handle(self, errors: list[str]) -> None:
        if not errors:
            return
        if self.mode == "stop":
            more = f" (and {len(errors) - 1} more in this batch)" if len(errors) > 1 else ""
            raise DataError(
                f"{errors[0]}{more} [{self.context}; set data.on_decode_error=skip to skip "
                f"unreadable images]"
            )
        for err in errors:
            self.skipped.append(err)
            log.warning("skipped an unreadable image (%d so far): %s", len(self.skipped), err)


def stream_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    sampler: Any = None,
    collate_fn: Callable[..., Any] = collate_stream,
) -> DataLoader:
    pin = torch.cuda.is_available()
    shuffle = shuffle and sampler is None
    return batch_loader(
        dataset, batch_size, shuffle, num_workers, pin, sampler=sampler, collate_fn=collate_fn
    )


def load_for_eval(
    path: str | Path, channels: int, eval_transform: Mapping[str, Any], where: str = ""
) -> Tensor:
    """One file through a streamed checkpoint's eval transform (predict/export)."""
    try:
        return eval_decoder(eval_transform, channels)(path)
    except DataError as e:
        raise DataError(f"{e} ({where})" if where else str(e)) from None
