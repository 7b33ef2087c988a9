"""What every image datamodule shares: uint8 splits, loaders, normalization, augmentation.

A source only says which images form each split (``load_splits``); model input is made here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from imgcls.data.checks import (
    SPLITS,
    CheckOptions,
    CheckReport,
    act_on,
    load_report,
    run_checks,
    save_report,
)
from imgcls.data.dup_hash import Hashes, hash_images
from imgcls.data.spec import DataSpec
from imgcls.data.tensor_dataset import TensorImageDataset, batch_loader
from imgcls.data.transforms import normalize

log = logging.getLogger(__name__)

# What run logs, metrics.json and sweep tables say where test/* would be.
NO_TEST_SPLIT = "no labeled test split"


class Splits(dict[str, TensorImageDataset]):
    """``train``/``val``/``test``/``predict`` datasets (any may be absent)."""


class ImageDataModule(L.LightningDataModule):
    """Base datamodule over in-memory uint8 tensors.

    ``train_augment`` runs on training batches in pixel space (float 0..255, before normalization);
    ``batch_mix`` (MixUp/CutMix) on normalized ones, making soft targets. ``mean``/``std``
    ``None``: the subclass default. ``checks``: ``data.checks`` (duplicates, leakage)."""

    default_mean: tuple[float, ...] = (0.5,)
    default_std: tuple[float, ...] = (0.5,)

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_augment: Callable[[Tensor], Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_mix: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]] | None = None,
        checks: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.train_augment = train_augment
        self.batch_mix = batch_mix
        self._mean = tuple(mean) if mean is not None else None
        self._std = tuple(std) if std is not None else None
        self.splits: Splits | None = None
        self.class_names: tuple[str, ...] = ()
        self._spec: DataSpec | None = None
        self._served: dict[str, Dataset] = {}
        self.check_options = CheckOptions.from_config(checks)
        self.check_report: CheckReport | None = None
        self.split_hashes: dict[str, Hashes] = {}

    def load_splits(self) -> Splits:
        """The uint8 datasets of each split; sets ``self.class_names``."""
        raise NotImplementedError

    def fingerprint(self, split: str) -> str:
        """Changes whenever the images or labels of ``split`` may: caches of derived data key on it."""
        raise NotImplementedError(f"{type(self).__name__} does not fingerprint its data")

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:  # idempotent: the builder calls it before the Trainer does
            self.splits = self.load_splits()
            for name, ds in self.splits.items():
                images = getattr(ds, "images", None)  # stream datasets decode per sample
                shape = tuple(images.shape[1:]) if images is not None else "(decoded per sample)"
                log.info("%s: %d images %s", name, len(ds), shape)
            if self.check_options.leakage != "off":
                self.run_data_checks()

    def describe(self) -> str:
        return type(self).__name__

    def run_data_checks(self) -> None:
        """Duplicates, leakage and label conflicts (``data.checks``), before any training."""
        t0, opts, saved = time.perf_counter(), self.check_options, self.checks_file()
        sizes = {k: len(v) for k, v in (self.splits or {}).items() if k in SPLITS}
        report = load_report(saved, opts, sizes) if saved is not None else None
        if report is None:
            self.split_hashes = self.hash_splits()
            if not self.split_hashes:
                return
            report = run_checks(self.split_hashes, opts)
            if saved is not None:
                save_report(saved, report, opts)
        if not report.names:  # a saved report: names of the same images
            splits: Mapping[str, Any] = self.splits or {}
            report.names = {s: self.image_names(s, len(splits[s])) for s in report.counts["images"]}
        report.seconds = time.perf_counter() - t0  # hashing included
        self.check_report = report
        act_on(report, self.check_options, self.describe())

    def checks_file(self) -> Path | None:
        """Where a fixed data set (MNIST) keeps its checks' report between runs; ``None``: none."""
        return None

    def hash_splits(self) -> dict[str, Hashes]:
        """Hashes of the decoded train/val/test images (no decode of their own)."""
        assert self.splits is not None
        out = {}
        for s in (s for s in SPLITS if s in self.splits):
            ds = self.splits[s]
            h = hash_images(ds.images, threads=max(1, self.num_workers))
            h.names, h.labels = self.image_names(s, len(ds)), ds.targets
            out[s] = h
        return out

    def image_names(self, split: str, n: int) -> list[str]:
        """What the checks call the images of ``split`` (file names where there are files)."""
        return [f"{split}[{i}]" for i in range(n)]

    def example_image(self, split: str, index: int) -> Tensor:
        """uint8 ``(C, H, W)`` of one checked image, for the report's pictures."""
        splits: Mapping[str, Any] = self.splits or {}
        images = getattr(splits.get(split), "images", None)
        if images is not None:
            return images[index]
        side = int(self.split_hashes[split].thumb.shape[1] ** 0.5)
        return self.split_hashes[split].thumb[index].view(1, side, side)

    @property
    def spec(self) -> DataSpec:
        if self._spec is None:
            self._spec = self._make_spec()
        return self._spec

    def _make_spec(self) -> DataSpec:
        if self.splits is None:
            raise RuntimeError("call setup() before reading the data spec")
        c, h, w = self._input_shape()
        mean = self._mean or self.default_mean
        std = self._std or self.default_std
        if len(mean) == 1 and c > 1:
            mean, std = mean * c, std * c
        return DataSpec(
            num_classes=len(self.class_names),
            in_channels=int(c),
            image_size=(int(h), int(w)),
            class_names=self.class_names,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            eval_transform=self._eval_transform(),
        )

    def _input_shape(self) -> tuple[int, int, int]:
        assert self.splits is not None
        c, h, w = next(iter(self.splits.values())).images.shape[1:]
        return int(c), int(h), int(w)

    def _eval_transform(self) -> dict[str, Any] | None:
        return None

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalize with ``mean``/``std`` from now on (set by pretrained weights, checkpoints)."""
        self._mean, self._std = tuple(mean), tuple(std)
        self._spec = None

    def use_dataset(self, split: str, dataset: Dataset | None) -> None:
        """Serve ``dataset`` (e.g. cached features) in ``split``'s loader; ``None`` restores images."""
        if dataset is None:
            self._served.pop(split, None)
        else:
            self._served[split] = dataset

    @property
    def has_labeled_test(self) -> bool:
        """Whether a labeled ``test`` split exists: the only split ``test/*`` metrics may name."""
        self.setup()
        assert self.splits is not None
        test = self.splits.get("test")
        return test is not None and len(test) > 0 and bool((test.targets >= 0).all())

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.image_size

    def _split(self, name: str) -> TensorImageDataset:
        self.setup()
        assert self.splits is not None
        if name not in self.splits:
            raise RuntimeError(f"{type(self).__name__} has no '{name}' split")
        return self.splits[name]

    def _loader(self, name: str, train: bool = False, num_workers: int | None = None) -> DataLoader:
        dataset = self._served[name] if name in self._served else self._split(name)
        return batch_loader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers if num_workers is None else num_workers,
            pin_memory=self.pin_memory,
            sampler=None if train else self._eval_sampler(dataset),
        )

    def _eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP every eval image is scored exactly once: Lightning's default sampler pads
        the last shard with repeats, biasing synced metrics. Without gradient sync, unequal
        shards are safe, and Lightning keeps a ``DistributedSampler`` subclass in place."""
        trainer = self.trainer
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not kwargs or kwargs.get("num_replicas", 1) <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if self.splits and "predict" in self.splits else "test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        if images.dtype != torch.uint8:  # e.g. cached features: nothing to decode
            return batch
        spec = self.spec
        images = normalize(self._augment(images), spec.mean, spec.std)
        if self.batch_mix is not None and self.trainer is not None and self.trainer.training:
            return self.batch_mix(images, targets, spec.num_classes)  # soft targets
        return images, targets

    def _augment(self, images: Tensor) -> Tensor:
        """Training augmentation on pixel values (float 0..255): its zero fill is black, the
        value evaluation images' borders have, not the dataset mean of normalized space."""
        if self.train_augment is None or self.trainer is None or not self.trainer.training:
            return images
        return self.train_augment(images.float())
