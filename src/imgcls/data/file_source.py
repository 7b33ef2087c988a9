"""What every file-based source shares: validate a (path, label) list, decode it once, cache it.

A source (CSV, ImageFolder) only lists ``ImageEntry`` items per split. This module then, in
``setup()`` and before any epoch runs:

1. checks every entry (listed file exists, inside the image directory, is a decodable image,
   its label is a known class) and raises ONE ``DataError`` naming every bad file with its
   CSV row/column;
2. splits train/val (stratified, seeded) when the source has no validation list;
3. decodes every image once, with a thread pool (PIL releases the GIL), into one uint8
   ``(N, C, H, W)`` tensor — or reloads it from an on-disk cache keyed by the file list with
   sizes and mtimes plus the decode settings. Batches are then gathered from memory, so
   nothing is decoded per epoch.

Under DDP the decode into the on-disk cache happens once per node: in ``prepare_data`` (local
rank 0), while the other ranks' ``setup`` waits on the cache's file lock and memory-maps the
file; the log names the rank that decoded.

``decode_images`` is the same decoding for callers without a datamodule (predict inputs).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from imgcls.data.base_datamodule import NO_TEST_SPLIT, ImageDataModule, Splits
from imgcls.data.images import (
    GRAY_MODES,
    check_size_options,
    decode_image,
    probe_image,
    target_size,
)
from imgcls.data.stream_splits import resolve_loading, stream_splits
from imgcls.data.streaming import DecodeErrors, StreamOptions, check_loading, stream_loader
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.errors import ConfigError, DataError
from imgcls.utils.ranks import local_rank

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SPLIT_ORDER = ("train", "val", "test", "predict")


@dataclass(frozen=True)
class ImageEntry:
    """One listed image.

    Attributes:
        path: absolute file path (already checked to lie inside its image directory).
        label: class label as written in the data (``None``: unlabeled, e.g. a test CSV).
        name: how the data names the item: the CSV cell (an id) or the path relative to the
            split's directory. Predictions are written against it.
        where: location for error messages, e.g. ``"train.csv row 3 (line 4), column 'id'"``.
    """

    path: Path
    label: str | None
    name: str
    where: str


class Problems:
    """Per-entry problems collected during validation, raised together as one ``DataError``."""

    def __init__(self, limit: int = 25) -> None:
        self.items: list[str] = []
        self.limit = limit

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, context: str) -> None:
        """Raise one ``DataError`` listing the problems (the first ``limit`` of them)."""
        if not self.items:
            return
        # by file, then row number ("row 9" before "row 10"), whatever the stage that found it
        self.items.sort(key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
        if len(self.items) == 1:
            raise DataError(f"{self.items[0]} [{context}]")
        shown = "\n".join(f"  - {p}" for p in self.items[: self.limit])
        more = len(self.items) - self.limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(f"{len(self.items)} problems in {context}:\n{shown}{tail}")


def sort_class_names(labels: Sequence[str] | set[str]) -> tuple[str, ...]:
    """Class names in a stable order: numerically when every label is an integer, else as text."""
    unique = set(labels)

    def as_int(s: str) -> int | None:
        try:
            return int(s)
        except ValueError:
            return None

    if unique and all(as_int(s) is not None for s in unique):
        return tuple(sorted(unique, key=lambda s: (int(s), s)))
    return tuple(sorted(unique))


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val), both in the original order, holding out ``val_fraction`` of each class.

    Every class with at least two items keeps one in each part; the draw is seeded, so the
    same labels and seed always give the same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction must be in (0, 1) when no validation data is given, got {val_fraction}"
        )
    g = torch.Generator().manual_seed(int(seed))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    val: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        k = round(len(idx) * val_fraction)
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        perm = torch.randperm(len(idx), generator=g)[:k].tolist()
        val += [idx[j] for j in perm]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def check_folds(num_folds: int | None, fold: int | None) -> None:
    """Refuse fold settings that cannot give a k-fold split (before any data is read)."""
    if num_folds is None:
        if fold is not None:
            raise ConfigError(f"data.fold={fold} needs data.num_folds (e.g. 5)")
        return
    if int(num_folds) < 2:
        raise ConfigError(f"data.num_folds must be >= 2 (or null: no folds), got {num_folds}")
    if fold is None or not 0 <= int(fold) < int(num_folds):
        raise ConfigError(
            f"data.fold must be in 0..{int(num_folds) - 1} for data.num_folds={num_folds}, got {fold}"
        )


def stratified_folds(labels: Sequence[int], num_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of each item: each class shuffled (seeded) then dealt round-robin.

    Per-class counts then differ by at most one across folds; each item is in exactly one
    fold. The dealing starts where the previous class stopped, so fold sizes stay balanced.
    """
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y) if len(y) else np.zeros(0, dtype=np.int64)
    small = [c for c, n in enumerate(counts) if 0 < n < num_folds]
    if small:
        raise ConfigError(
            f"data.num_folds={num_folds} but class index {small[0]} has only {counts[small[0]]} "
            f"training images (every class needs at least num_folds)"
        )
    rng = np.random.default_rng(int(seed))
    folds = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.flatnonzero(counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = (start + np.arange(len(idx))) % num_folds
        start = (start + len(idx)) % num_folds
    return folds


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


SIZE_MISMATCH = "differs in size"


def decode_images(
    paths: Sequence[str | os.PathLike],
    channels: int,
    size: tuple[int, int] | None = None,
    resize_factor: int | None = None,
    threads: int = 2,
    out: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, list[str | None]]:
    """Decode ``paths`` into one uint8 ``(N, C, H, W)`` tensor with a thread pool.

    Args:
        paths: image files.
        channels: 1 (grayscale) or 3 (RGB).
        size: (height, width) every image is resized to. ``None`` keeps the native size
            (divided by ``resize_factor``), which must then be the same for every file: the
            first readable file sets it and files of another size are reported as errors.
        resize_factor: shrink by this integer factor (only with ``size=None``).
        threads: decoding threads.
        out: preallocated ``(N, C, H, W)`` uint8 tensor to fill (e.g. memory-mapped).
        progress: called as ``progress(done, total)`` from the calling thread.

    Returns:
        The images, and per path ``None`` or an error message naming the file (that row of
        the tensor is then zeros). Callers decide whether to stop or skip.
    """
    n = len(paths)
    fixed = size is not None
    first: str | os.PathLike = paths[0] if n else ""
    if size is None:
        size = (1, 1)
        for p in paths:
            try:
                size = target_size(probe_image(p)[0], None, resize_factor)
                first = p
                break
            except DataError:
                continue
    h, w = size
    if out is None:
        out = torch.zeros(n, channels, h, w, dtype=torch.uint8)
    elif tuple(out.shape) != (n, channels, h, w):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(n, channels, h, w)}")
    errors: list[str | None] = [None] * n

    def one(i: int) -> None:
        try:
            if fixed:
                arr = decode_image(paths[i], channels, size)
            else:
                arr = decode_image(paths[i], channels, None, resize_factor)
        except DataError as e:
            errors[i] = str(e)
            return
        if arr.shape[:2] != (h, w):
            errors[i] = (
                f"image {paths[i]} {SIZE_MISMATCH}: {arr.shape[0]}x{arr.shape[1]} where {first} "
                f"gives {h}x{w}; set an image size to resize them all"
            )
            return
        out[i].copy_(torch.from_numpy(arr).permute(2, 0, 1))

    if n:
        with ThreadPoolExecutor(
            max_workers=max(1, int(threads)), thread_name_prefix="decode"
        ) as pool:
            for done, _ in enumerate(pool.map(one, range(n)), 1):
                if progress is not None:
                    progress(done, n)
    return out, errors


class DecodedCache:
    """Decoded uint8 images on disk: a raw ``.u8`` file, memory-mapped on reload, plus a JSON.

    The key hashes the ordered file list with sizes and mtimes and the decode settings, so
    any change to a listed file, its order, the channels or the size decodes afresh. Files
    are written under a temporary name and renamed when complete: an interrupted run never
    leaves a half-written cache behind.
    """

    def __init__(self, cache_dir: str | os.PathLike, key: str) -> None:
        self.dir = Path(cache_dir)
        self.key = key
        self.data = self.dir / f"{key}.u8"
        self.meta = self.dir / f"{key}.json"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``<key>.lock`` exclusively: one process decodes, the others wait, then load.

        A file lock rather than a collective: the datamodule is set up before the trainer
        (the model is sized from the data), when no process group exists yet. The kernel
        drops the lock of a process that dies, so a killed decoder never blocks the others.
        """
        path = self.dir / f"{self.key}.lock"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = open(path, "a")  # noqa: SIM115 (closed below)
        except OSError:  # read-only or no directory: decoding falls back to memory anyway
            yield
            return
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError as e:  # a file system without locks: every process decodes
                log.debug("no lock on %s (%s)", path, e)
            try:
                yield
            finally:
                # Removed while still held: a process that opened the old file still gets its
                # turn and then finds the cache; at worst two processes decode the same files
                # into their own temporary files, which is safe (the rename is atomic).
                path.unlink(missing_ok=True)

    def load(self) -> Tensor | None:
        """The cached tensor (memory-mapped, read-only use), or ``None`` when absent/invalid."""
        if not (self.meta.is_file() and self.data.is_file()):
            return None
        try:
            shape = tuple(int(s) for s in json.loads(self.meta.read_text())["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        numel = math.prod(shape)
        if self.data.stat().st_size != numel:
            log.warning("decode cache %s has the wrong size; decoding again", self.data)
            return None
        if numel == 0:
            return torch.empty(shape, dtype=torch.uint8)
        return torch.from_file(str(self.data), shared=False, size=numel, dtype=torch.uint8).view(
            shape
        )

    def allocate(self, shape: tuple[int, ...]) -> tuple[Tensor, Path]:
        """A memory-mapped tensor backed by a temporary file, to decode into."""
        self.dir.mkdir(parents=True, exist_ok=True)
        numel = math.prod(shape)
        free = shutil.disk_usage(self.dir).free
        if numel > free:
            raise DataError(
                f"decoded images need {_fmt_bytes(numel)} but {self.dir} has {_fmt_bytes(free)} free: "
                f"free space, set data.cache_dir elsewhere, or data.cache_dir=null to keep them in memory"
            )
        tmp = self.dir / f"{self.key}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.truncate(numel)
            if numel == 0:
                return torch.empty(shape, dtype=torch.uint8), tmp
            mapped = torch.from_file(str(tmp), shared=True, size=numel, dtype=torch.uint8)
        except (OSError, RuntimeError):
            tmp.unlink(missing_ok=True)
            raise
        return mapped.view(shape), tmp

    def commit(self, tmp: Path, shape: tuple[int, ...], info: dict[str, Any]) -> None:
        meta_tmp = self.dir / f"{self.key}.json.{os.getpid()}.tmp"
        meta_tmp.write_text(
            json.dumps({"version": CACHE_VERSION, "shape": list(shape), **info}, indent=1)
        )
        os.replace(tmp, self.data)
        os.replace(meta_tmp, self.meta)  # the meta file last: it marks the cache complete


@dataclass
class _Plan:
    """What ``load_splits`` decided before decoding: order, file stats, cache (see ``_plan``)."""

    order: list[Path]
    position: dict[Path, int]
    where: dict[Path, str]
    stats: dict[Path, tuple[int, int]]
    class_index: dict[str, int]
    settings: dict[str, Any]
    problems: Problems
    cache: DecodedCache | None
    t0: float
    streamed: Splits | None = None  # data.loading=stream: the per-sample splits, no decode


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _rank_name() -> str:
    """``rank 0`` (global rank, known from the environment before the trainer sets it)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return f"rank {getattr(rank_zero_only, 'rank', 0)} (pid {os.getpid()})"


class FileImageDataModule(ImageDataModule):
    """Base for sources that list image files with labels (CSV, ImageFolder).

    Subclasses implement ``list_entries``; validation, splitting, decoding and caching live
    here so that every source refuses bad data the same way.

    Args:
        channels: 1 (grayscale) or 3 (RGB); ``None`` picks 1 when every image is grayscale.
        image_size: ``[height, width]`` every image is resized to.
        resize_factor: shrink each image by this integer factor instead (the seed CNN's 8).
            With neither, all images must share one size.
        val_fraction: fraction of each class held out for validation when the source lists
            no validation data.
        split_seed: seed of that split (independent of the training seed).
        test_fraction: for sources without a labeled test split, hold out this fraction of
            each training class as the test split (stratified, seeded by ``split_seed``,
            drawn before and apart from the validation split). ``None``: no test split, so
            no ``test/*`` metrics.
        cache_dir: directory for the on-disk decode cache (memory-mapped on reload, so it also
            serves datasets larger than RAM); ``None`` decodes into memory on every run.
        num_workers: threads that decode the images at set-up. Batches are gathered from the
            decoded tensor in the main process, where DataLoader worker processes would only
            add inter-process copies, so the loaders themselves use no workers. On the stream
            path they are the DataLoader worker processes that decode each sample.
        loading: ``memory`` (decode once at set-up), ``stream`` (decode per sample in workers,
            see ``imgcls.data.streaming``) or ``auto`` (memory when the decoded set fits
            ``memory_budget_mb``, else stream; the log says which and why).
        memory_budget_mb: decoded size (uint8 at ``image_size``) up to which ``auto`` decodes
            into memory.
        on_decode_error: stream path, a file failing to decode mid-epoch: ``stop`` with an
            error naming it, or ``skip`` it (counted and logged).
        stream: per-sample transform options of the stream path (``StreamOptions``).
        **kwargs: batch sizes, pinning, augmentation, normalization (see ``ImageDataModule``).
            ``mean``/``std`` ``None`` are measured on the training images.
    """

    source_name = "image files"

    def __init__(
        self,
        channels: int | None = None,
        image_size: Sequence[int] | None = None,
        resize_factor: int | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 12345,
        cache_dir: str | None = None,
        num_workers: int = 2,
        test_fraction: float | None = None,
        loading: str = "memory",
        memory_budget_mb: float = 2048,
        on_decode_error: str = "stop",
        stream: Mapping[str, Any] | None = None,
        num_folds: int | None = None,
        fold: int | None = None,
        digits_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_workers=num_workers, **kwargs)
        check_folds(num_folds, fold)
        self.num_folds = None if num_folds is None else int(num_folds)
        self.fold = None if fold is None else int(fold)
        self.digits_dir = str(digits_dir) if digits_dir else None
        check_loading(loading, on_decode_error, memory_budget_mb)
        self.loading = loading
        self.memory_budget_mb = float(memory_budget_mb)
        self.stream_options = StreamOptions.from_config(stream)
        self.decode_errors = DecodeErrors(on_decode_error, self.source_name)
        self.loading_used: str | None = None  # "memory" or "stream" once set up
        self.stream_info: dict[str, Any] = {}
        if channels not in (None, 1, 3):
            raise ConfigError(
                f"data.channels must be 1 (grayscale), 3 (RGB) or null, got {channels}"
            )
        check_size_options(image_size, resize_factor)
        self.channels = None if channels is None else int(channels)
        self.target_image_size = (
            None if image_size is None else (int(image_size[0]), int(image_size[1]))
        )
        self.resize_factor = None if resize_factor is None else int(resize_factor)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.test_fraction = None if test_fraction is None else float(test_fraction)
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.entries: dict[str, list[ImageEntry]] = {}
        self._fingerprints: dict[str, str] = {}
        self._planned: _Plan | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        """Entries per split (``train`` required; ``val``, ``test``, ``predict`` optional).

        Structural errors (no CSV rows, missing columns, no images at all) raise ``DataError``
        at once; per-entry problems are added to ``problems`` and the entry left out.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data comes from, for error messages."""
        return self.source_name

    # -- public API ----------------------------------------------------------------------------
    @property
    def predict_names(self) -> list[str]:
        """Names of the ``predict`` items in order (CSV ids / file names); ``[]`` when none.

        Row ``i`` of ``trainer.predict(..., datamodule=dm)`` output belongs to
        ``predict_names[i]``, so an ``id,label`` submission is ``zip(predict_names, labels)``.
        """
        self.setup()
        return [e.name for e in self.entries.get("predict", [])]

    @property
    def predict_files(self) -> list[Path]:
        """Files of the ``predict`` items, aligned with ``predict_names``."""
        self.setup()
        return [e.path for e in self.entries.get("predict", [])]

    def fingerprint(self, split: str) -> str:
        """Hash of the split's files (path, size, mtime), labels, classes and decode settings."""
        self.setup()
        if split not in self._fingerprints:
            raise RuntimeError(f"{type(self).__name__} has no '{split}' split")
        return self._fingerprints[split]

    # -- loading -------------------------------------------------------------------------------
    def _plan(self) -> _Plan:
        """List and check the entries, fix the decode order and the cache key (once)."""
        if self._planned is not None:
            return self._planned
        self._digits_ready()
        t0 = time.perf_counter()
        problems = Problems()
        listed = self.list_entries(problems)
        if not listed.get("train"):
            problems.raise_if_any(self.describe())
            raise DataError(f"{self.describe()}: no training images listed")

        # classes come from the training labels; every other labeled split must use them
        self.class_names = sort_class_names(
            {e.label for e in listed["train"] if e.label is not None}
        )
        class_index = {c: i for i, c in enumerate(self.class_names)}
        for split in ("val", "test"):
            kept = []
            unknown: dict[str, list[ImageEntry]] = {}
            for e in listed.get(split, []):
                if e.label is not None and e.label not in class_index:
                    unknown.setdefault(e.label, []).append(e)
                else:
                    kept.append(e)
            for label, bad in unknown.items():
                more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                problems.add(
                    bad[0].where,
                    f"label {label!r} ({split} split{more}) is not a class of the training data "
                    f"(classes: {', '.join(self.class_names[:20])}{', ...' if len(self.class_names) > 20 else ''})",
                )
            if split in listed:
                listed[split] = kept

        if self.test_fraction is not None:
            self._hold_out_test(listed, class_index)
        if self.num_folds is not None:
            self._fold_split(listed, class_index)
        if not listed.get("val"):
            train_y = [class_index[e.label] for e in listed["train"]]  # type: ignore[index]
            tr, va = stratified_split(train_y, self.val_fraction, self.split_seed)
            log.info(
                "no validation list: holding out %.0f%% of each class (%d images, stratified, seed %d)",
                100 * self.val_fraction,
                len(va),
                self.split_seed,
            )
            train_entries = listed["train"]
            listed["train"] = [train_entries[i] for i in tr]
            listed["val"] = [train_entries[i] for i in va]
            if not listed["val"]:
                raise DataError(
                    f"{self.describe()}: too few training images to hold out a validation set"
                )

        # one decode order for all splits: each split is then a contiguous slice of one tensor
        self.entries = {s: listed[s] for s in SPLIT_ORDER if listed.get(s)}
        order: list[Path] = []
        position: dict[Path, int] = {}
        where: dict[Path, str] = {}
        for s in self.entries:
            for e in self.entries[s]:
                if e.path not in position:
                    position[e.path] = len(order)
                    order.append(e.path)
                    where[e.path] = e.where
        stats: dict[Path, tuple[int, int]] = {}
        for p in order:
            try:
                st = os.stat(p)
            except OSError:
                problems.add(where[p], f"image file not found: {p}{self.missing_hint(p)}")
                continue
            stats[p] = (st.st_size, st.st_mtime_ns)

        self.loading_used = resolve_loading(self, order, stats)
        if self.loading_used == "stream":
            streamed = stream_splits(self, order, where, stats, problems, class_index, t0)
            self._planned = _Plan(
                order, position, where, stats, class_index, {}, problems, None, t0, streamed
            )
            return self._planned
        settings = {
            "channels": self.channels,
            "image_size": self.target_image_size,
            "resize_factor": self.resize_factor,
        }
        cache = None
        if self.cache_dir and not problems:
            # Pillow's version too: another libjpeg/resampler may decode different pixels
            key_src = json.dumps(
                {
                    "v": CACHE_VERSION,
                    "pillow": PIL.__version__,
                    **settings,
                    "files": [(str(p), *stats[p]) for p in order],
                }
            )
            cache = DecodedCache(self.cache_dir, hashlib.sha256(key_src.encode()).hexdigest()[:32])
        self._planned = _Plan(
            order, position, where, stats, class_index, settings, problems, cache, t0
        )
        return self._planned

    def prepare_data(self) -> None:
        """Decode into the on-disk cache (Lightning calls this on local rank 0 only).

        The other ranks' ``setup`` waits for it on the cache's lock and memory-maps the file,
        so a node decodes once and holds the pixels once (in the page cache).
        """
        if self.splits is not None:
            return
        self._digits_ready()
        plan = self._plan()
        if plan.cache is not None and not plan.problems:
            self._ensure_cached(plan)

    def _digits_ready(self) -> None:
        """A missing default digits root (``<digits_dir>/digits_*``): local rank 0 builds it
        from MNIST (``imgcls.data.digits``), the other ranks wait for it."""
        root = getattr(self, "root", None)
        if root is None or self.digits_dir is None or Path(root).exists():
            return
        from imgcls.data.digits import ensure_digits, wait_for_digits

        if local_rank() == 0:
            ensure_digits(root, self.digits_dir)
        else:
            wait_for_digits(root, self.digits_dir)

    def _ensure_cached(self, plan: _Plan) -> Tensor | None:
        """Decode into the cache unless it is there: whoever takes its lock first decodes.

        Returns the decoded tensor when this process decoded, else ``None``.
        """
        cache = plan.cache
        assert cache is not None
        with cache.lock():
            if cache.load() is None:
                return self._decode(plan.order, plan.where, plan.stats, plan.problems, cache)
        return None

    def _cached_images(self, plan: _Plan) -> Tensor | None:
        """The decode cache, memory-mapped (decoded first when no process has done so)."""
        cache = plan.cache
        assert cache is not None
        decoded = self._ensure_cached(plan)
        images = None if plan.problems else cache.load()
        if images is None:  # problems to report, or the cache could not be written
            return decoded
        log.info(
            "decode cache: loaded %d decoded images %s from %s in %.1f s, %s (memory-mapped; "
            "delete the file to force a fresh decode)",
            len(plan.order),
            tuple(images.shape[1:]),
            cache.data,
            time.perf_counter() - plan.t0,
            _rank_name(),
        )
        return images  # the same read-only mapping on every rank

    def load_splits(self) -> Splits:
        plan = self._plan()
        if plan.streamed is not None:
            return plan.streamed
        position, class_index, settings, stats = (
            plan.position,
            plan.class_index,
            plan.settings,
            plan.stats,
        )
        problems = plan.problems
        t0 = plan.t0
        images = None
        if plan.cache is not None and not problems:
            images = self._cached_images(plan)
        elif not problems and _world_size() > 1:
            log.info(
                "data.cache_dir=null: every DDP rank decodes the images itself (set data.cache_dir "
                "to decode once per node)"
            )
        if images is None:
            images = self._decode(plan.order, plan.where, stats, problems, None)
        problems.raise_if_any(self.describe())
        assert images is not None

        splits = Splits()
        for s, entries in self.entries.items():
            idx = [position[e.path] for e in entries]
            if idx == list(range(idx[0], idx[0] + len(idx))):
                x = images[idx[0] : idx[0] + len(idx)]  # a view: no copy of the pixels
            else:
                x = images[torch.tensor(idx)]
            y = torch.tensor([class_index[e.label] if e.label is not None else -1 for e in entries])
            splits[s] = TensorImageDataset(x, y)
            h = hashlib.sha256(
                json.dumps(
                    {
                        "source": type(self).__name__,
                        **settings,
                        "classes": list(self.class_names),
                        "items": [(str(e.path), *stats[e.path], e.label) for e in entries],
                    }
                ).encode()
            )
            self._fingerprints[s] = f"{type(self).__name__}/{s}/{h.hexdigest()[:32]}"

        if self._mean is None:
            self._mean, self._std = self._measure_mean_std(splits["train"].images)
            log.info(
                "normalization: mean %s, std %s measured on the training images (set data.mean/std to fix them)",
                tuple(round(m, 4) for m in self._mean),
                tuple(round(s, 4) for s in self._std),
            )
        log.info(
            "%s: %d classes (%s%s), set-up %.1f s",
            self.describe(),
            len(self.class_names),
            ", ".join(self.class_names[:10]),
            ", ..." if len(self.class_names) > 10 else "",
            time.perf_counter() - t0,
        )
        return splits

    def _fold_split(self, listed: dict[str, list[ImageEntry]], class_index: dict[str, int]) -> None:
        """Fold ``fold`` of the training pool (after the test hold-out) is val, the rest train."""
        assert self.num_folds is not None and self.fold is not None
        if listed.get("val"):
            log.info("data.num_folds is set: the listed validation images are not used")
        pool = listed["train"]
        folds = stratified_folds(
            [class_index[e.label] for e in pool],  # type: ignore[index]
            self.num_folds,
            self.split_seed,
        )
        listed["train"] = [e for e, f in zip(pool, folds, strict=True) if f != self.fold]
        listed["val"] = [e for e, f in zip(pool, folds, strict=True) if f == self.fold]
        log.info(
            "fold %d of %d: %d validation, %d training images (stratified, seed %d)",
            self.fold,
            self.num_folds,
            len(listed["val"]),
            len(listed["train"]),
            self.split_seed,
        )

    def _hold_out_test(
        self, listed: dict[str, list[ImageEntry]], class_index: dict[str, int]
    ) -> None:
        """Move ``test_fraction`` of each training class into a labeled ``test`` split."""
        if listed.get("test"):
            raise ConfigError(
                f"data.test_fraction={self.test_fraction} but {self.describe()} already has a "
                "labeled test split; set data.test_fraction=null"
            )
        if not 0.0 < float(self.test_fraction or 0.0) < 1.0:
            raise ConfigError(
                f"data.test_fraction must be in (0, 1) or null, got {self.test_fraction}"
            )
        train_entries = listed["train"]
        train_y = [class_index[e.label] for e in train_entries]  # type: ignore[index]
        # a seed of its own: the validation draw that follows stays seeded by split_seed
        rest, test = stratified_split(
            train_y, float(self.test_fraction or 0.0), self.split_seed + 1
        )
        if not test:
            raise DataError(f"{self.describe()}: too few training images to hold out a test set")
        listed["train"] = [train_entries[i] for i in rest]
        listed["test"] = [train_entries[i] for i in test]
        log.info(
            "data.test_fraction: holding out %.0f%% of each class as the test split "
            "(%d images, stratified, seed %d), apart from validation",
            100 * float(self.test_fraction or 0.0),
            len(test),
            self.split_seed + 1,
        )

    def missing_hint(self, path: Path) -> str:
        """Extra words for a missing file (sources that know similar names override this)."""
        return ""

    def _decode(
        self,
        order: list[Path],
        where: dict[Path, str],
        stats: dict[Path, tuple[int, int]],
        problems: Problems,
        cache: DecodedCache | None,
    ) -> Tensor | None:
        """Settle channels and size, decode every file; problems are collected.

        File headers are probed first (cheap) when the channels or the size depend on the
        files, or when problems were already found; every readable file is then decoded in
        full, so truncated files are reported in the same error as the other problems.
        """
        threads = max(1, self.num_workers)
        present = [p for p in order if p in stats]
        channels = self.channels
        size = self.target_image_size
        # Probing every header costs a second open per file: only when the channels depend
        # on the files or problems need a complete report; a size needs just the first file.
        probe_all = channels is None or bool(problems)
        if not probe_all and size is None:
            try:
                size = target_size(probe_image(present[0])[0], None, self.resize_factor)
            except DataError:
                probe_all = True
        if probe_all:
            probed: dict[Path, tuple[tuple[int, int], str]] = {}

            def probe(p: Path) -> str | None:
                try:
                    probed[p] = probe_image(p)
                except DataError as e:
                    return str(e)
                return None

            with ThreadPoolExecutor(max_workers=threads) as pool:
                for p, err in zip(present, pool.map(probe, present), strict=True):
                    if err is not None:  # in listing order, whatever thread finished first
                        problems.add(where[p], err)
            if not probed:
                return None
            if channels is None:
                channels = 1 if all(mode in GRAY_MODES for _, mode in probed.values()) else 3
                log.info(
                    "channels: %d (%s; set data.channels to choose)",
                    channels,
                    "every image is grayscale" if channels == 1 else "colour images found",
                )
            sizes: dict[tuple[int, int], list[Path]] = {}
            for p, (native, _) in probed.items():
                key = target_size(native, self.target_image_size, self.resize_factor)
                sizes.setdefault(key, []).append(p)
            if len(sizes) > 1:
                common = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
                listing = "; ".join(
                    f"{h}x{w} ({len(ps)} images, e.g. {ps[0]})" for (h, w), ps in common[:4]
                )
                how = "resized by data.resize_factor" if self.resize_factor else "as stored"
                problems.add(
                    "",
                    f"the images have {len(sizes)} different sizes ({how}): {listing}; "
                    f"set data.image_size=[height,width] to resize them all to one size",
                )
                return None
            size = next(iter(sizes))
            if problems:  # decode the readable files only to report every bad one at once
                readable = [p for p in present if p in probed]

                def check(p: Path) -> str | None:
                    try:
                        decode_image(p, channels, size)
                    except DataError as e:
                        return str(e)
                    return None

                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for p, err in zip(readable, pool.map(check, readable), strict=True):
                        if err is not None:
                            problems.add(where[p], err)
                return None
        assert channels is not None and size is not None
        (h, w) = size

        shape = (len(order), channels, h, w)
        nbytes = math.prod(shape)
        avail = available_memory()
        out = None
        tmp = None
        if cache is not None:
            try:
                out, tmp = cache.allocate(shape)
            except (OSError, RuntimeError) as e:  # read-only mount, no mmap: train without it
                log.warning(
                    "cannot write the decode cache in %s (%s); decoding into memory", cache.dir, e
                )
                cache = None
        if cache is not None:
            where_to = f"on-disk cache {cache.data} (memory-mapped)"
        else:
            if avail is not None and nbytes > 0.8 * avail:
                raise DataError(
                    f"{self.describe()}: the decoded images need {_fmt_bytes(nbytes)} but only "
                    f"{_fmt_bytes(avail)} of memory is available; set data.cache_dir=<dir> to keep them "
                    f"in a memory-mapped file, or lower data.image_size"
                )
            where_to = "memory"
        log.info(
            "decoding %d images once into %s: %s uint8, %s, %d threads, by %s",
            len(order),
            where_to,
            tuple(shape[1:]),
            _fmt_bytes(nbytes),
            threads,
            _rank_name(),
        )
        t0 = time.perf_counter()
        last = [t0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 10:
                last[0] = now
                log.info("decoded %d/%d images (%.0f images/s)", done, total, done / (now - t0))

        try:
            images, errors = decode_images(
                order,
                channels,
                self.target_image_size,
                self.resize_factor,
                threads=threads,
                out=out,
                progress=progress,
            )
            mismatched = [p for p, e in zip(order, errors, strict=True) if e and SIZE_MISMATCH in e]
            for p, err in zip(order, errors, strict=True):
                if err is not None and SIZE_MISMATCH not in err:
                    problems.add(where[p], err)
            if mismatched:
                how = "resized by data.resize_factor" if self.resize_factor else "as stored"
                examples = ", ".join(str(p) for p in mismatched[:3])
                problems.add(
                    "",
                    f"{len(mismatched)} images differ in size ({how}) from {h}x{w} of {order[0]}, "
                    f"e.g. {examples}; set data.image_size=[height,width] to resize them all to one size",
                )
            if cache is not None and tmp is not None and not problems:
                cache.commit(tmp, shape, {"files": len(order), "channels": channels})
                tmp = None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        dt = time.perf_counter() - t0
        log.info(
            "decoded %d images in %.1f s (%.0f images/s)%s",
            len(order),
            dt,
            len(order) / max(dt, 1e-9),
            f"; cached in {cache.data}" if cache is not None and not problems else "",
        )
        return images

    @staticmethod
    def _measure_mean_std(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of uint8 images scaled to [0, 1].

        Exact integer sums over chunks of ~16 M pixels: no float copy of a large dataset.
        """
        n, c = images.shape[:2]
        per_image = max(1, images[0].numel()) if n else 1
        chunk = max(1, (1 << 24) // per_image)
        s = torch.zeros(c, dtype=torch.int64)
        s2 = torch.zeros(c, dtype=torch.int64)
        for i in range(0, n, chunk):
            x = images[i : i + chunk].to(torch.int32)
            s += x.sum(dim=(0, 2, 3), dtype=torch.int64)
            s2 += x.square().sum(dim=(0, 2, 3), dtype=torch.int64)
        count = max(1, images.numel() // c)
        mean = s.double() / count / 255.0
        var = s2.double() / count / 255.0**2 - mean.square()
        std = var.clamp_min(1e-12).sqrt()
        return tuple(float(m) for m in mean), tuple(max(float(v), 1e-3) for v in std)

    # -- loaders -------------------------------------------------------------------------------
    def _loader(self, name: str, train: bool = False, num_workers: int | None = None) -> DataLoader:
        self.setup()
        if self.loading_used == "stream" and name not in self._served:
            dataset = self._split(name)
            return stream_loader(
                dataset,
                self.batch_size if train else self.eval_batch_size,
                shuffle=train,
                num_workers=self.num_workers,
                sampler=None if train else self._eval_sampler(dataset),
            )
        # in-memory gathers: worker processes would only add copies (see ``num_workers``)
        return super()._loader(name, train, num_workers=0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if len(batch) == 3 and isinstance(batch[2], list) and self.loading_used == "stream":
            self.decode_errors.handle(batch[2])  # stop: raises naming the file; skip: counts
            batch = batch[:2]
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def _input_shape(self) -> tuple[int, int, int]:
        if self.loading_used == "stream":
            h, w = self.stream_info["image_size"]
            return int(self.stream_info["channels"]), int(h), int(w)
        return super()._input_shape()

    def _eval_transform(self) -> dict[str, Any] | None:
        return self.stream_info.get("eval_transform") if self.loading_used == "stream" else None

    def test_dataloader(self) -> DataLoader:
        self.setup()
        assert self.splits is not None
        if not self.has_labeled_test:
            # never score the validation split under test/* names (it chose the checkpoint)
            raise DataError(
                f"{self.describe()} has {NO_TEST_SPLIT}: set data.test_fraction (e.g. 0.1) "
                "to hold one out, or give labeled test data"
            )
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        assert self.splits is not None
        for name in ("predict", "test"):
            if name in self.splits:
                return self._loader(name)
        raise DataError(f"{self.describe()} has no images to predict (no predict or test list)")
