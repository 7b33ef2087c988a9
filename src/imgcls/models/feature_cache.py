"""Frozen-backbone feature cache: compute the backbone once, train the head from disk.

A frozen backbone under a deterministic eval transform produces the same features every epoch
and every run, so recomputing them is the whole cost of training a head. ``FeatureCache``
computes them once per split (``torch.inference_mode``, channels_last, the trainer's precision),
stores them under a key of everything that changes them, and makes the datamodule serve them
instead of the images for the fit. The model itself is untouched: checkpoints hold the full
backbone + head, and ``trainer.test`` after the fit runs on images again.

The key covers: a digest of the backbone's weights (so random, pretrained and local weights
are told apart by value), its architecture and input channels, the data's normalization and
image size (the eval transform), the source's ``fingerprint(split)`` (file list with sizes and
mtimes for file-based sources), and the precision. A head-only setting (learning rate, hidden
sizes, dropout, seed of the head) is not in the key, so a sweep over them shares one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from imgcls.data.tensor_dataset import BatchTensorDataset, batch_loader
from imgcls.data.transforms import normalize
from imgcls.errors import ConfigError
from imgcls.models.compiled import unwrap
from imgcls.utils.config import project_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class FeatureDataset(BatchTensorDataset):
    """Float features ``(N, D)`` with int64 targets, fetched a whole batch at a time."""

    @property
    def features(self) -> Tensor:
        return self.inputs


def parse_mode(value: Any) -> bool | str:
    """``true`` / ``false`` / ``auto`` (as YAML or a command line gives them)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", "null"):
        return False
    if text == "auto":
        return "auto"
    raise ConfigError(f"model.cache_features={value!r}: use true, false or auto")


def _drop_built_train_loader(trainer: L.Trainer) -> None:
    """Make the fit loop request its train loader again, now that the datamodule serves features.

    ``trainer.estimated_stepping_batches`` (read by ``configure_optimizers`` for schedulers
    that need the total step count, e.g. OneCycle) builds the image loader before
    ``on_fit_start``; the fit loop would then keep it, and the backbone would run every epoch.
    The features dataset has as many items as the images, so the step count stays right.
    """
    loop = trainer.fit_loop
    if getattr(loop, "_combined_loader", None) is not None:
        loop._combined_loader = None


class FeatureCache(L.Callback):
    """Serve cached backbone features for the ``train`` and ``val`` splits during ``fit``.

    Args:
        cache_dir: where feature files live (``None``: ``<project>/.cache/features``).
        mode: ``True``, ``False`` or ``"auto"`` (on when the data has no train augmentation:
            cached features are computed from un-augmented images).
        splits: splits to serve from the cache.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        mode: bool | str = "auto",
        splits: Sequence[str] = ("train", "val"),
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else project_root() / ".cache" / "features"
        self.mode = parse_mode(mode)
        self.splits = tuple(splits)
        self.hits: list[str] = []  # split names served from an existing file (for logs and tests)
        self.misses: list[str] = []
        self._swapped: list[str] = []

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the model is on its device, before any dataloader is requested.
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        if not self._enabled(dm):
            return
        net: Any = unwrap(pl_module.net)
        if not getattr(net, "backbone_frozen", False):
            raise ConfigError("model.cache_features needs a frozen backbone")
        signature = net.feature_signature()
        for split in self.splits:
            if split not in (dm.splits or {}):
                continue
            features = self._load_or_compute(trainer, pl_module, net, dm, split, signature)
            dm.use_dataset(split, features)
            self._swapped.append(split)
        if "train" in self._swapped:
            _drop_built_train_loader(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        for split in self._swapped:  # test/predict after the fit run on images again
            dm.use_dataset(split, None)
        self._swapped = []

    # -- internals ------------------------------------------------------------------------------
    def _enabled(self, dm: Any) -> bool:
        if self.mode is False:
            return False
        if not hasattr(dm, "use_dataset"):  # plain dataloaders passed to fit(): nothing to swap
            if self.mode is True:
                raise ConfigError("model.cache_features=true needs an imgcls ImageDataModule")
            return False
        if getattr(dm, "loading_used", None) == "stream":  # per-sample decode, per-epoch transforms
            if self.mode is True:
                raise ConfigError(
                    "model.cache_features=true needs data.loading=memory (the stream path "
                    "transforms each sample anew every epoch)"
                )
            log.info("feature cache off: data.loading chose stream")
            return False
        # MixUp/CutMix (data.batch_mix) work on images too: cached features would skip them
        augment = getattr(dm, "train_augment", None) or getattr(dm, "batch_mix", None)
        if self.mode == "auto" and augment is not None:
            log.info(
                "feature cache off: the training data is augmented (model.cache_features=true forces it)"
            )
            return False
        if augment is not None:
            log.warning(
                "feature cache on: training augmentation is skipped (features come from un-augmented images)"
            )
        try:
            dm.fingerprint("train")
        except NotImplementedError:
            if self.mode == "auto":
                log.info("feature cache off: %s cannot fingerprint its data", type(dm).__name__)
                return False
            raise ConfigError(
                f"model.cache_features=true needs a data source that fingerprints its data; "
                f"{type(dm).__name__} does not (set model.cache_features=false)"
            ) from None
        return True

    def key(
        self, trainer: L.Trainer, dm: Any, split: str, signature: dict[str, Any]
    ) -> dict[str, Any]:
        """Everything the cached features of ``split`` depend on."""
        spec = dm.spec
        return {
            "format": FORMAT_VERSION,
            "backbone": signature,
            "precision": str(trainer.precision),
            "data": f"{type(dm).__module__}.{type(dm).__qualname__}",
            "fingerprint": dm.fingerprint(split),
            "split": split,
            "image_size": list(spec.image_size),
            "in_channels": spec.in_channels,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "class_names": list(spec.class_names),
        }

    def path_for(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{key['backbone']['arch']}-{key['split']}-{digest}.pt"

    def _load_or_compute(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        net: Any,
        dm: Any,
        split: str,
        signature: dict[str, Any],
    ) -> FeatureDataset:
        # through JSON: plain lists and dicts, as the file stores them
        key = json.loads(json.dumps(self.key(trainer, dm, split, signature)))
        path = self.path_for(key)
        n = len(dm.splits[split])
        # Local rank 0 looks for the file and computes it when missing; then every rank meets
        # at the barrier (whether or not a file was found: no barrier only some ranks reach)
        # and the others read the file.
        computed = False
        cached = self._read(path, key, n) if trainer.local_rank == 0 else None
        if trainer.local_rank == 0 and cached is None:
            # Forked RNG: iterating a DataLoader draws a seed, and a run that finds the
            # cache must train exactly like the run that computed it.
            with torch.random.fork_rng(devices=[]):
                features, targets = self._compute(trainer, pl_module, net, dm, split)
            self._write(path, key, features, targets)
            computed = True
        trainer.strategy.barrier("feature_cache")
        if cached is None:
            cached = self._read(path, key, n)
            if cached is None:
                raise RuntimeError(f"feature cache {path} was not written")
        if computed:
            self.misses.append(split)
        else:
            self.hits.append(split)
            log.info("feature cache hit: %s %s from %s", split, tuple(cached.features.shape), path)
        return cached

    def _read(self, path: Path, key: dict[str, Any], n: int) -> FeatureDataset | None:
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated file from a killed run: recompute it
            log.warning("feature cache %s unreadable (%s): recomputing", path, e)
            return None
        if blob.get("key") != key or len(blob["features"]) != n:
            return None
        return FeatureDataset(blob["features"], blob["targets"])

    def _write(self, path: Path, key: dict[str, Any], features: Tensor, targets: Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.part")
        torch.save({"key": key, "features": features, "targets": targets}, tmp)
        os.replace(tmp, path)  # atomic: readers never see half a file
        log.info("feature cache written: %s (%.1f MB)", path, path.stat().st_size / 2**20)

    @torch.inference_mode()
    def _compute(
        self, trainer: L.Trainer, pl_module: L.LightningModule, net: Any, dm: Any, split: str
    ) -> tuple[Tensor, Tensor]:
        spec = dm.spec
        device = pl_module.device
        loader = batch_loader(
            dm.splits[split],
            batch_size=dm.eval_batch_size,
            shuffle=False,
            num_workers=dm.num_workers,
            pin_memory=dm.pin_memory,
        )
        total = len(dm.splits[split])
        log.info("feature cache miss: computing %s features of %d images (once)", split, total)
        feats: list[Tensor] = []
        targets: list[Tensor] = []
        done, t0 = 0, time.perf_counter()
        next_report = t0 + 30.0
        with trainer.precision_plugin.forward_context():
            for images, y in loader:
                x = normalize(images.to(device, non_blocking=True), spec.mean, spec.std)
                feats.append(net.features(x).float().cpu())
                targets.append(y)
                done += len(y)
                if time.perf_counter() > next_report:
                    rate = done / (time.perf_counter() - t0)
                    log.info(
                        "  %s features: %d/%d images (%.0f images/s)", split, done, total, rate
                    )
                    next_report += 30.0
        # (inference tensors: the caller trains from the file it writes, never from these)
        return torch.cat(feats), torch.cat(targets)
