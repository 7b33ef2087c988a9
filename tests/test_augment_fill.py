"""Augmentation fills exposed borders in pixel space: black (normalized value of 0), as
torchvision does, not the dataset mean that a zero fill in normalized space gives."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.base_datamodule import ImageDataModule, Splits
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.data.transforms import BatchRandomAffine, normalize


class Flat(ImageDataModule):
    """White 16x16 images, normalized with MNIST-like statistics."""

    def load_splits(self) -> Splits:
        self.class_names = ("a",)
        images = torch.full((4, 1, 16, 16), 255, dtype=torch.uint8)
        return Splits(train=TensorImageDataset(images, torch.zeros(4, dtype=torch.long)))


class Training:
    training = True


def test_exposed_borders_are_black_after_normalization() -> None:
    mean, std = (0.1307,), (0.3081,)
    # shrink to half size: every image has a wide exposed border
    dm = Flat(train_augment=BatchRandomAffine(scale=(0.5, 0.5)), mean=mean, std=std)
    dm.setup()
    dm.trainer = Training()  # type: ignore[assignment]
    images = dm.splits["train"].images
    x, _ = dm.on_after_batch_transfer((images, torch.zeros(4)), 0)
    black = normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), mean, std).item()
    white = normalize(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), mean, std).item()
    assert black == pytest.approx(-0.1307 / 0.3081)
    corners = x[:, 0, :2, :2]
    assert torch.allclose(corners, torch.full_like(corners, black), atol=1e-6), corners
    centre = x[:, 0, 7:9, 7:9]
    assert torch.allclose(centre, torch.full_like(centre, white), atol=1e-5)
    # evaluation batches are not augmented and equal plain normalization
    dm.trainer.training = False
    x_eval, _ = dm.on_after_batch_transfer((images, torch.zeros(4)), 0)
    assert torch.equal(x_eval, normalize(images, mean, std))
    assert torch.equal(images, torch.full_like(images, 255))  # the stored pixels untouched
