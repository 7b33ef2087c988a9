"""Frozen-backbone feature cache: compute the backbone once, train the head from disk.

Under the deterministic eval transform a frozen backbone gives the same features every epoch and
run. The key holds all that changes them (backbone values, eval transform, the source's
``fingerprint(split)``, precision) and no head-only setting, so a sweep over lr, head or seed
shares one cache. Only the fit is served features; ``trainer.test`` sees images."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from imgcls.data.tensor_dataset import BatchTensorDataset, batch_loader
from imgcls.data.transforms import normalize
from imgcls.errors import ConfigError
from imgcls.models.compiled import unwrap
from imgcls.utils.config import project_root
from imgcls.utils.files import atomic_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _drop_built_train_loader(trainer: L.Trainer) -> None:
    """``estimated_stepping_batches`` (OneCycle's step count) builds the image loader before
    ``on_fit_start``; the fit loop would keep it and run the backbone every epoch. (The step
    count stays right: as many features as images.)"""
    loop = trainer.fit_loop
    if getattr(loop, "_combined_loader", None) is not None:
        loop._combined_loader = None


class FeatureCache(L.Callback):
    """Serve cached backbone features for ``splits`` during ``fit``; ``mode="auto"``: on when
    the data has no train augmentation (features are computed from un-augmented images)."""

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        mode: bool | str = "auto",  # as models.transfer.parse_mode returns it
        splits: Sequence[str] = ("train", "val"),
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else project_root() / ".cache" / "features"
        self.mode = mode
        self.splits = tuple(splits)
        self.hits: list[str] = []  # splits served from an existing file (logs and tests)
        self.misses: list[str] = []
        self._swapped: list[str] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the model is on its device, no dataloader requested yet
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        if not self._enabled(dm):
            return
        net: Any = unwrap(cast(nn.Module, pl_module.net))
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

    def _enabled(self, dm: Any) -> bool:
        if self.mode is False:
            return False
        if not hasattr(dm, "use_dataset"):  # plain dataloaders passed to fit(): nothing to swap
            return self._off("model.cache_features=true needs an imgcls ImageDataModule")
        if getattr(dm, "loading_used", None) == "stream":  # per-sample decode, per-epoch transforms
            return self._off(
                "model.cache_features=true needs data.loading=memory (the stream path "
                "transforms each sample anew every epoch)",
                "data.loading chose stream",
            )
        # MixUp/CutMix (data.batch_mix) work on images too: cached features would skip them
        augment = getattr(dm, "train_augment", None) or getattr(dm, "batch_mix", None)
        if augment is not None:
            if self.mode == "auto":
                log.info(
                    "feature cache off: the training data is augmented (model.cache_features=true forces it)"
                )
                return False
            log.warning(
                "feature cache on: training augmentation is skipped (features come from un-augmented images)"
            )
        try:
            dm.fingerprint("train")
        except NotImplementedError:
            name = type(dm).__name__
            return self._off(
                f"model.cache_features=true needs a data source that fingerprints its data; "
                f"{name} does not (set model.cache_features=false)",
                f"{name} cannot fingerprint its data",
            )
        return True

    def _off(self, forced: str, auto: str | None = None) -> bool:
        """Under ``mode=true`` why the cache cannot run is an error; under ``auto`` it is off."""
        if self.mode is True:
            raise ConfigError(forced) from None
        if auto:
            log.info("feature cache off: %s", auto)
        return False

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
    ) -> BatchTensorDataset:
        # through JSON: plain lists and dicts, as the file stores them
        key = json.loads(json.dumps(self.key(trainer, dm, split, signature)))
        path, n = self.path_for(key), len(dm.splits[split])
        # Local rank 0 reads or computes; every rank meets at the barrier (found or not: no
        # barrier only some ranks reach), then the others read the file.
        cached = self._read(path, key, n) if trainer.local_rank == 0 else None
        computed = trainer.local_rank == 0 and cached is None
        if computed:
            # forked RNG: a loader draws a seed, and a cache hit must train like the miss
            with torch.random.fork_rng(devices=[]):
                self._write(path, key, *self._compute(trainer, pl_module, net, dm, split))
        trainer.strategy.barrier("feature_cache")
        if cached is None and (cached := self._read(path, key, n)) is None:
            raise RuntimeError(f"feature cache {path} was not written")
        (self.misses if computed else self.hits).append(split)
        if not computed:
            log.info("feature cache hit: %s %s from %s", split, tuple(cached.inputs.shape), path)
        return cached

    def _read(self, path: Path, key: dict[str, Any], n: int) -> BatchTensorDataset | None:
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated file from a killed run: recompute it
            log.warning("feature cache %s unreadable (%s): recomputing", path, e)
            return None
        if blob.get("key") != key or len(blob["features"]) != n:
            return None
        return BatchTensorDataset(blob["features"], blob["targets"])

    def _write(self, path: Path, key: dict[str, Any], features: Tensor, targets: Tensor) -> None:
        with atomic_file(path) as f:  # readers never see half a file
            torch.save({"key": key, "features": features, "targets": targets}, f)
        log.info("feature cache written: %s (%.1f MB)", path, path.stat().st_size / 2**20)

    @torch.inference_mode()
    def _compute(
        self, trainer: L.Trainer, pl_module: L.LightningModule, net: Any, dm: Any, split: str
    ) -> tuple[Tensor, Tensor]:
        spec, device = dm.spec, pl_module.device
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
        report_at = t0 + 30.0
        with trainer.precision_plugin.forward_context():
            for images, y in loader:
                x = normalize(images.to(device, non_blocking=True), spec.mean, spec.std)
                feats.append(net.features(x).float().cpu())
                targets.append(y)
                done += len(y)
                if (now := time.perf_counter()) > report_at:
                    rate, report_at = done / (now - t0), report_at + 30.0
                    log.info(
                        "  %s features: %d/%d images (%.0f images/s)", split, done, total, rate
                    )
        # (inference tensors: the caller trains from the file it writes, never from these)
        return torch.cat(feats), torch.cat(targets)
