"""Frozen ResNet on file-based data: ImageFolder digits end to end, and ``data=flowers`` as typed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from imgcls.builder import build
from imgcls.models.classifier import ImageClassifier
from imgcls.models.load import load_classifier
from imgcls.tasks.train import train
from tests.conftest import compose_config, make_digits, run_entry


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory, train=600, test=150)


def folder_cfg(root: Path, out: Path, *overrides: str):
    return compose_config(
        "train",
        [
            "model=resnet18",
            "model.weights=null",
            "model.net.freeze=true",  # a frozen random backbone: the feature cache's case
            "data=folder",
            # the folder set has no test/: hold out a labeled test split from train/
            "data.test_fraction=0.1",
            f"data.root={root}",
            "data.image_size=[28,28]",  # the digits are mixed-size
            "data.cache_dir=null",
            # fixed normalization: measured on the training images it would change (and with it
            # every split's features) whenever the training files change
            "data.mean=[0.25,0.25,0.25]",
            "data.std=[0.2,0.2,0.2]",
            f"model.cache_dir={out.parent}/features",
            "logger=none",
            "~callbacks.rich_progress_bar",
            "~callbacks.lr_monitor",
            "~callbacks.model_summary",
            "+trainer.enable_progress_bar=false",
            *overrides,
        ],
        out,
    )


def test_resnet18_on_imagefolder_digits_caches_features_and_keeps_batchnorm(
    digits, tmp_path, monkeypatch
):
    root = tmp_path / "digits_folder"
    shutil.copytree(digits, root)  # this test changes the file list later
    batches: list[tuple[int, int]] = []  # (epoch, ndim of the training input)
    step = ImageClassifier.training_step

    def spy(self, batch, batch_idx):
        batches.append((self.current_epoch, batch[0].ndim))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", spy)
    cfg = folder_cfg(root, tmp_path / "run1", "trainer.max_epochs=15")
    metrics = train(cfg)

    # every epoch trained the head from cached 512-d features, not from images
    assert {e for e, _ in batches} == set(range(15)) and {n for _, n in batches} == {2}
    features = tmp_path / "features"
    files = {p.name: p.stat().st_mtime_ns for p in features.glob("*.pt")}
    assert sorted(n.split("-")[1] for n in files) == ["train", "val"]
    # the test after the fit ran the best checkpoint on images: an ordinary full model
    assert metrics["test/acc"] >= 0.4  # chance is 0.1 (random frozen backbone)

    # BatchNorm statistics (and every other backbone tensor) are bit-identical to the start
    summary = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    trained = load_classifier(summary["best_checkpoint"]).net.backbone.state_dict()
    L.seed_everything(int(cfg.seed))
    initial = build(cfg).model.net.backbone.state_dict()
    assert any(k.endswith("running_var") for k in initial)
    assert all(torch.equal(trained[k], initial[k]) for k in initial)

    # a later run (another head learning rate) reuses both files
    train(folder_cfg(root, tmp_path / "run2", "trainer.max_epochs=1", "model.optimizer.lr=0.003"))
    assert {p.name: p.stat().st_mtime_ns for p in features.glob("*.pt")} == files

    # one training image fewer: the train features are recomputed, the val ones reused
    next((root / "train" / "3").iterdir()).unlink()
    train(folder_cfg(root, tmp_path / "run3", "trainer.max_epochs=1"))
    after = {p.name: p.stat().st_mtime_ns for p in features.glob("*.pt")}
    assert len(after) == 3 and all(after[name] == t for name, t in files.items())
    assert [n.split("-")[1] for n in set(after) - set(files)] == ["train"]


def fake_flowers(root: Path, classes: int = 6, train: int = 2, valid: int = 1) -> None:
    """Flowers-102 layout (class folders of JPEGs of assorted sizes), random pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("valid", valid)):
        for c in range(1, classes + 1):
            d = root / split / str(c)
            d.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(200, 320, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"image_{c:03d}{i:02d}.jpg", quality=85)


@pytest.mark.slow
def test_resnet152_on_flowers_as_typed_with_weights_in_place(tmp_path):
    """``python src/train.py model=resnet152 data=flowers`` once data and weights are there."""
    fake_flowers(tmp_path / "data" / "flowers")
    torch.manual_seed(0)
    weights = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet152-f82ba261.pth"
    weights.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), weights)
    r = run_entry(
        "train",
        "model=resnet152",
        "data=flowers",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        env={"TORCH_HOME": str(tmp_path / "torch_home")},
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(next((tmp_path / "logs").glob("train/runs/*/metrics.json")).read_text())
    assert {"val/acc", "val/acc_top5"} <= set(summary["metrics"])
    # train/ and valid/ only: no test split, so no test/* (val chose the checkpoint)
    assert summary["test"] == "no labeled test split"
    assert not [k for k in summary["metrics"] if k.startswith("test/")]
    assert "ResNet152_Weights.IMAGENET1K_V2" in r.stdout  # the DEFAULT weights file was loaded
    assert "feature cache off: the training data is augmented" in r.stdout
