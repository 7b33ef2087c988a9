"""A few hundred MNIST digits as a datamodule: enough to exercise a ResNet end to end quickly."""

from __future__ import annotations

import torch

from imgcls.data.base_datamodule import Splits
from imgcls.data.mnist_datamodule import MNISTDataModule


class TinyMNIST(MNISTDataModule):
    """The first ``n_train``/``n_val``/``n_test`` images of the MNIST splits."""

    def __init__(self, n_train: int = 128, n_val: int = 64, n_test: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}

    def fingerprint(self, split: str) -> str:
        return f"{super().fingerprint(split)}/first{self.sizes[split]}"

    def load_splits(self) -> Splits:
        full = super().load_splits()
        return Splits({k: full[k].subset(torch.arange(n)) for k, n in self.sizes.items()})
