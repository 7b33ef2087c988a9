"""The feature cache is in force for training under every shipped scheduler: the backbone sees
each image of each split once (before training), and never again in later epochs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from imgcls.builder import build
from imgcls.engine.feature_cache import FeatureCache

SCHEDULERS = {
    "none": ["model.scheduler=null"],
    # as model=lenet / simple_cnn ship it (total_steps from trainer.estimated_stepping_batches)
    "onecycle": [
        "+model.scheduler._target_=torch.optim.lr_scheduler.OneCycleLR",
        "+model.scheduler._partial_=true",
        "+model.scheduler.max_lr=0.01",
        "model.scheduler_interval=step",
    ],
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """3 classes x (10 train + 4 valid) RGB PNGs of 24x24."""
    root = tmp_path_factory.mktemp("tiny_folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("valid", 4)):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
                arr[:, :, c] += 120
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


class ImagesThroughBackbone(L.Callback):
    """Images through the backbone by phase: ``setup`` (before the first batch), ``train<e>``, ``val``."""

    def __init__(self, backbone) -> None:
        self.images: Counter[str] = Counter()
        self.phase = "setup"
        backbone.register_forward_hook(
            lambda m, inp, out: self.images.update({self.phase: len(inp[0])})
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.phase = f"train{trainer.current_epoch}"

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.phase = "val"


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_cache_serves_training_under_each_scheduler(
    scheduler, tiny_folder, make_cfg, tmp_path
) -> None:
    cfg = make_cfg(
        "train",
        [
            "model=resnet18",
            "model.weights=null",
            "model.net.freeze=true",
            "model.cache_features=true",
            f"model.cache_dir={tmp_path}/features",
            "data=folder",
            f"data.root={tiny_folder}",
            "data.image_size=[24,24]",
            "data.cache_dir=null",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "logger=none",
            "callbacks=none",
            "+trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false",
            "trainer.max_epochs=3",
            *SCHEDULERS[scheduler],
        ],
    )
    L.seed_everything(0)
    built = build(cfg)
    counter = ImagesThroughBackbone(built.model.net.backbone)
    built.trainer.callbacks.append(counter)
    built.trainer.fit(built.model, datamodule=built.datamodule)
    cache = next(c for c in built.trainer.callbacks if isinstance(c, FeatureCache))
    assert cache.misses == ["train", "val"]
    n = {s: len(built.datamodule.splits[s]) for s in ("train", "val")}
    assert n == {"train": 30, "val": 12}
    # one pass per image per split, all before training; none in any epoch
    assert dict(counter.images) == {"setup": n["train"] + n["val"]}, counter.images
    assert built.trainer.global_step == 3 * 4  # ceil(30 / 8) steps per epoch, from the features
    if scheduler == "onecycle":
        sched = built.trainer.lr_scheduler_configs[0].scheduler
        assert sched.total_steps == 12
