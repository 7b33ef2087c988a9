"""The datamodule base of file-listing sources (CSV, ImageFolder): check, split, decode, cache.

A source lists ``ImageEntry`` items per split; ``setup()`` then checks them all (one ``DataError``
naming every bad file, ``validation``), holds out test/val/folds (``splits``) and decodes every
image once into a uint8 tensor (``decode``) or maps the on-disk cache (``decode_cache``). Under
DDP local rank 0 fills the cache in ``prepare_data``; other ranks wait on its lock, then map it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from imgcls.data.base_datamodule import NO_TEST_SPLIT, ImageDataModule, Splits
from imgcls.data.decode import decode_images, decode_listing, rank_name
from imgcls.data.decode_cache import DecodedCache, cache_key, fingerprint
from imgcls.data.dup_hash import Hashes
from imgcls.data.file_checks import (
    FileListing,
    ImageEntry,
    Problems,
    drop_unknown_labels,
    sort_class_names,
    stat_files,
)
from imgcls.data.images import check_size_options
from imgcls.data.splits import check_folds, fold_split, hold_out_test, hold_out_val
from imgcls.data.stats import log_mean_std, measure_mean_std
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.engine.streaming.loader import DecodeErrors, StreamOptions, check_loading, stream_loader
from imgcls.engine.streaming.setup_decode import SetupDecode, entry_names
from imgcls.engine.streaming.splits import resolve_loading, stream_splits
from imgcls.errors import ConfigError, DataError
from imgcls.utils.ranks import local_rank

__all__ = ["FileImageDataModule", "FileListing", "ImageEntry", "Problems", "decode_images"]

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test", "predict")


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


class FileImageDataModule(ImageDataModule):
    """Base for sources that list image files with labels; subclasses implement ``list_entries``.

    ``channels=None`` picks 1 when every image is grayscale; ``image_size`` or an integer
    ``resize_factor`` (the seed CNN's 8) sets the size, else all images must share one.
    ``val_fraction``/``test_fraction``/``num_folds`` hold out per class (``split_seed``).
    ``num_workers``: decoding threads (in-memory loaders use none: they would only add copies), or
    the stream path's loader workers. ``allow_outside_root``: read files that symlinks in the
    root point outside it (``imgcls.data.roots``). ``mean``/``std`` ``None``: measured on the training images."""

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
        allow_outside_root: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_workers=num_workers, **kwargs)
        check_folds(num_folds, fold)
        check_loading(loading, on_decode_error, memory_budget_mb)
        check_size_options(image_size, resize_factor)
        if channels not in (None, 1, 3):
            raise ConfigError(
                f"data.channels must be 1 (grayscale), 3 (RGB) or null, got {channels}"
            )
        self.num_folds, self.fold = _int(num_folds), _int(fold)
        self.allow_outside_root = bool(allow_outside_root)  # see imgcls.data.roots
        self.digits_dir = str(digits_dir) if digits_dir else None
        self.loading, self.memory_budget_mb = loading, float(memory_budget_mb)
        self.stream_options = StreamOptions.from_config(stream)
        self.decode_errors = DecodeErrors(on_decode_error, self.source_name)
        self.loading_used: str | None = None  # "memory" or "stream" once set up
        self.stream_info: dict[str, Any] = {}
        self.setup_decode = SetupDecode()  # the stream path's set-up decode (hashes for checks)
        self.channels = _int(channels)
        self.target_image_size = (
            None if image_size is None else (int(image_size[0]), int(image_size[1]))
        )
        self.resize_factor = _int(resize_factor)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.test_fraction = None if test_fraction is None else float(test_fraction)
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.entries: dict[str, list[ImageEntry]] = {}
        self._fingerprints: dict[str, str] = {}
        self._listing: FileListing | None = None

    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        """Entries per split (``train`` required): structural errors (no rows, missing columns)
        raise ``DataError``; per-entry ones go to ``problems`` and the entry is left out."""
        msg = "subclass imgcls.data.file_list.FileListDataModule and implement list_files()"
        raise NotImplementedError(f"{type(self).__name__}: {msg} (README, 'Add a dataset')")

    def describe(self) -> str:
        return self.source_name

    def missing_hint(self, path: Path) -> str:
        """Extra words for a missing file (sources that know similar names override this)."""
        return ""

    @property
    def predict_names(self) -> list[str]:
        """CSV ids / file names of the ``predict`` items: row ``i`` of ``trainer.predict``."""
        self.setup()
        return [e.name for e in self.entries.get("predict", [])]

    @property
    def predict_files(self) -> list[Path]:
        self.setup()
        return [e.path for e in self.entries.get("predict", [])]

    def fingerprint(self, split: str) -> str:
        self.setup()
        if split not in self._fingerprints:
            raise RuntimeError(f"{type(self).__name__} has no '{split}' split")
        return self._fingerprints[split]

    def set_fingerprint(self, split: str, about: dict[str, Any], stats: dict) -> None:
        about = {**about, "classes": list(self.class_names)}
        self._fingerprints[split] = fingerprint(
            type(self).__name__, split, about, self.entries[split], stats
        )

    def _listed(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        """The source's entries, checked against the training classes and split."""
        listed = self.list_entries(problems)
        if not listed.get("train"):
            problems.raise_if_any(self.describe())
            raise DataError(f"{self.describe()}: no training images listed")
        self.class_names = sort_class_names(
            {e.label for e in listed["train"] if e.label is not None}
        )
        drop_unknown_labels(listed, self.class_names, problems)
        index = {c: i for i, c in enumerate(self.class_names)}
        if self.test_fraction is not None:
            hold_out_test(listed, index, self.test_fraction, self.split_seed, self.describe())
        if self.num_folds is not None:
            fold_split(listed, index, self.num_folds, self.fold, self.split_seed)  # type: ignore[arg-type]
        if not listed.get("val"):
            hold_out_val(listed, index, self.val_fraction, self.split_seed, self.describe())
        return {s: listed[s] for s in SPLIT_ORDER if listed.get(s)}

    def _list_files(self) -> FileListing:
        """List and check the entries, fix one decode order and the cache key (once)."""
        if self._listing is not None:
            return self._listing
        self._digits_ready()
        t0 = time.perf_counter()
        problems = Problems()
        self.entries = self._listed(problems)
        position: dict[Path, int] = {}
        where: dict[Path, str] = {}
        for e in (e for entries in self.entries.values() for e in entries):
            if e.path not in position:
                position[e.path] = len(position)
                where[e.path] = e.where
        order = list(position)
        stats = stat_files(order, where, problems, self.missing_hint)
        index = {c: i for i, c in enumerate(self.class_names)}
        listing = FileListing(order, position, where, stats, index, problems, t0)
        settings, budget = self._settings(), self.memory_budget_mb
        self.loading_used = resolve_loading(self.loading, budget, order, stats, **settings)
        if self.loading_used == "stream":
            listing.streamed = self._stream_splits(listing)
        elif self.cache_dir and not problems:
            listing.cache = DecodedCache(self.cache_dir, cache_key(settings, order, stats))
        self._listing = listing
        return listing

    def _stream_splits(self, listing: FileListing) -> Splits:
        """data.loading=stream: the per-sample splits; keeps their shape, fingerprints, mean/std."""
        found = stream_splits(listing, self.entries, self.stream_options, **self._settings(),
                              threads=self.num_workers, seed=self.split_seed,
                              measure=self._mean is None, source=self.describe(),
                              hash_splits=self.check_options.leakage != "off",
                              memory_budget_mb=self.memory_budget_mb)  # fmt: skip
        self.decode_errors.context = self.describe()
        if self.decode_errors.mode == "stop":  # skip: the val split streams, counting them
            self.decode_errors.handle(found.decoded.val_errors)
        self.setup_decode = found.decoded
        self.stream_info = found.info
        for s in found.splits:
            self.set_fingerprint(s, found.about, listing.stats)
        if found.mean_std is not None:
            self._mean, self._std = found.mean_std
        return found.splits

    def _decode(self, listing: FileListing, cache: DecodedCache | None) -> Tensor | None:
        """``decode_listing`` with this source's settings."""
        return decode_listing(listing, cache, **self._settings(), threads=self.num_workers,
                              source=self.describe())  # fmt: skip

    def _settings(self) -> dict[str, Any]:
        size, factor = self.target_image_size, self.resize_factor
        return {"channels": self.channels, "image_size": size, "resize_factor": factor}

    def _digits_ready(self) -> None:
        """A missing default digits root: local rank 0 builds it from MNIST, the others wait."""
        root = getattr(self, "root", None)
        if root is None or self.digits_dir is None or Path(root).exists():
            return
        from imgcls.data.digits import ensure_digits, wait_for_digits

        (ensure_digits if local_rank() == 0 else wait_for_digits)(root, self.digits_dir)

    def prepare_data(self) -> None:
        """Local rank 0 decodes into the on-disk cache: a node decodes and holds the pixels once."""
        if self.splits is not None:
            return
        listing = self._list_files()
        if listing.cache is not None and not listing.problems:
            self._ensure_cached(listing)

    def _ensure_cached(self, listing: FileListing) -> Tensor | None:
        """Whoever takes the cache's lock first decodes; returns the tensor if this process did."""
        assert listing.cache is not None
        with listing.cache.lock():
            if listing.cache.load() is None:
                return self._decode(listing, listing.cache)
        return None

    def _images(self, listing: FileListing) -> Tensor | None:
        """The decoded tensor: the memory-mapped cache (decoded first if needed) or memory."""
        if listing.cache is not None and not listing.problems:
            images = self._cached_images(listing, listing.cache)
            if images is not None or listing.problems:
                return images
        elif not listing.problems and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            log.info(
                "data.cache_dir=null: every DDP rank decodes the images itself (set data.cache_dir to decode once per node)"
            )
        return self._decode(listing, None)

    def _cached_images(self, listing: FileListing, cache: DecodedCache) -> Tensor | None:
        decoded = self._ensure_cached(listing)
        images = None if listing.problems else cache.load()
        if images is None:  # problems to report, or the cache could not be written
            return decoded
        msg = "decode cache: loaded %d decoded images %s from %s in %.1f s, %s (memory-mapped; delete the file to force a fresh decode)"
        dt, shape = time.perf_counter() - listing.t0, tuple(images.shape[1:])
        log.info(msg, len(listing.order), shape, cache.data, dt, rank_name())
        return images  # the same read-only mapping on every rank

    def load_splits(self) -> Splits:
        listing = self._list_files()
        if listing.streamed is not None:
            return listing.streamed
        images = self._images(listing)
        listing.problems.raise_if_any(self.describe())
        assert images is not None
        splits = Splits()
        for s, entries in self.entries.items():
            idx = [listing.position[e.path] for e in entries]
            if idx == list(range(idx[0], idx[0] + len(idx))):
                x = images[idx[0] : idx[0] + len(idx)]  # a view: no copy of the pixels
            else:
                x = images[torch.tensor(idx)]
            y = torch.tensor(
                [-1 if e.label is None else listing.class_index[e.label] for e in entries]
            )
            splits[s] = TensorImageDataset(x, y)
            self.set_fingerprint(s, self._settings(), listing.stats)
        if self._mean is None:
            self._mean, self._std = measure_mean_std(splits["train"].images)
            log_mean_std(self._mean, self._std, "the training images")
        names = ", ".join(self.class_names[:10]) + (", ..." if len(self.class_names) > 10 else "")
        n, dt = len(self.class_names), time.perf_counter() - listing.t0
        log.info("%s: %d classes (%s), set-up %.1f s", self.describe(), n, names, dt)
        return splits

    def image_names(self, split: str, n: int) -> list[str]:
        return entry_names(self.entries[split], getattr(self, "root", "/"))

    def hash_splits(self) -> dict[str, Hashes]:
        if self.loading_used != "stream":
            return super().hash_splits()
        assert self.splits is not None
        return self.setup_decode.split_hashes(self.entries, self.splits, getattr(self, "root", "/"))

    def _loader(self, name: str, train: bool = False, num_workers: int | None = None) -> DataLoader:
        self.setup()
        dataset = self._split(name) if name not in self._served else None  # val may be decoded
        if self.loading_used == "stream" and not isinstance(dataset, TensorImageDataset | None):
            return stream_loader(
                dataset,
                self.batch_size if train else self.eval_batch_size,
                shuffle=train,
                num_workers=self.num_workers,
                sampler=None if train else self._eval_sampler(dataset),
            )
        return super()._loader(name, train, num_workers=0)  # in-memory gathers: no workers

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
