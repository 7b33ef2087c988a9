"""Frozen-backbone feature cache: head epochs from the cache vs through the backbone.

Two ratios, measured side by side on the same images (MNIST digits upsampled, grayscale
repeated to RGB by the net), frozen randomly initialized ResNet (the weights do not change
the cost), the project's own config for model and trainer:

- a head epoch from the cache vs an epoch that recomputes the backbone (goal >= 20x);
- the first, caching epoch (compute + store the features of train and val, then train the
  head from them) vs a bare ``inference_mode`` backbone loop over the same images (goal >= 0.9x).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks._common import EpochTimer, compose_cfg
from imgcls.builder import build_model, build_trainer
from imgcls.data.base_datamodule import Splits
from imgcls.data.mnist_datamodule import MNISTDataModule
from imgcls.data.tensor_dataset import TensorImageDataset, batch_loader
from imgcls.data.transforms import normalize
from imgcls.utils.config import project_root


class Digits(MNISTDataModule):
    """The first ``n_train``/``n_val`` MNIST training images, resized to ``size`` pixels."""

    def __init__(self, n_train: int, n_val: int, size: int, **kwargs) -> None:
        super().__init__(data_dir=str(project_root() / "data"), **kwargs)
        self.n = {"train": n_train, "val": n_val}
        self.size = size

    def fingerprint(self, split: str) -> str:
        return f"{super().fingerprint(split)}/first{self.n[split]}/{self.size}px"

    def load_splits(self) -> Splits:
        full = super().load_splits()
        out = Splits()
        for name, n in self.n.items():
            ds = full[name]
            x = F.interpolate(ds.images[:n].float(), size=(self.size, self.size), mode="bilinear")
            out[name] = TensorImageDataset(x.round().clamp(0, 255).to(torch.uint8), ds.targets[:n])
        return out


class FitClock(EpochTimer):
    """Adds the time from ``on_fit_start`` (where the cache is filled) to the first epoch's end."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if len(self.times) == 1:
            self.first_epoch = time.perf_counter() - self.fit_start


def bare_backbone(dm: Digits, model) -> float:
    """Seconds for one ``inference_mode`` backbone pass over the train and val images."""
    net, spec = model.net, dm.spec
    net.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for split in ("train", "val"):
            for x, _ in batch_loader(dm.splits[split], dm.eval_batch_size, shuffle=False):
                net.features(normalize(x, spec.mean, spec.std))
    return time.perf_counter() - t0


def fit(dm: Digits, overrides: list[str], out: Path, epochs: int) -> FitClock:
    cfg = compose_cfg(
        [
            *overrides,
            f"trainer.max_epochs={epochs}",
            "callbacks=none",
            "logger=none",
            "+trainer.enable_progress_bar=false",
            "+trainer.enable_checkpointing=false",
            "+trainer.num_sanity_val_steps=0",
        ],
        out,
    )
    torch.manual_seed(0)
    model = build_model(cfg, dm)
    trainer, _, _ = build_trainer(cfg)
    clock = FitClock()
    trainer.callbacks.append(clock)
    trainer.fit(model, datamodule=dm)
    return clock


def run(args) -> list[str]:
    # the seed's backbone and head; 96 px keeps a backbone pass to about a minute on 2 cores
    # (at the seed's 224 px the backbone costs 5x more per image, the head the same)
    arch, size, n_train, n_val = (
        ("resnet18", 32, 256, 64) if args.quick else ("resnet152", 96, 384, 96)
    )
    repeats = 1 if args.quick else args.repeats
    batch = 32
    tmp = Path(tempfile.mkdtemp(prefix="bench_feature_cache_"))
    dm = Digits(n_train, n_val, size, batch_size=batch, eval_batch_size=batch)
    dm.setup()
    base = [f"model={arch}", "model.weights=null", "model.net.freeze=true"]
    model = build_model(compose_cfg(base, tmp / "cfg"), dm)

    bare_backbone(dm, model)  # warm-up: first calls set up kernels for each input shape
    bare, first, cached, recompute = [], [], [], []
    for r in range(repeats):  # interleaved, so machine noise hits every contender alike
        bare.append(bare_backbone(dm, model))
        # a fresh cache directory: the first epoch computes and stores the features
        clock = fit(
            dm,
            [*base, "model.cache_features=true", f"model.cache_dir={tmp}/c{r}"],
            tmp / f"a{r}",
            2,
        )
        first.append(clock.first_epoch)
        cached.append(clock.times[1])
        clock = fit(dm, [*base, "model.cache_features=false"], tmp / f"b{r}", 1)
        recompute.append(clock.times[0])

    head, full = min(cached), min(recompute)
    return [
        f"{arch} frozen (random init) at {size}x{size} px, {n_train} train + {n_val} val images, "
        f"batch {batch}, fp32, best of {repeats} interleaved repeats",
        "",
        "| contender | seconds | ratio | goal |",
        "|---|---|---|---|",
        f"| head epoch recomputing the backbone | {full:.2f} | 1.00 | |",
        f"| head epoch from the cache | {head:.3f} | {full / head:.1f}x faster | >= 20x |",
        f"| bare backbone loop over train + val (inference_mode) | {min(bare):.2f} | 1.00 | |",
        f"| first epoch with caching (train + val features, then the head epoch) | {min(first):.2f} "
        f"| {min(bare) / min(first):.2f}x the bare loop's speed | >= 0.9x |",
    ]
