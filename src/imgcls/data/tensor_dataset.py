"""In-memory tensors served a batch at a time: per-sample ``__getitem__`` + collation costs
more than a small net's forward pass, so ``__getitems__`` gathers a batch in one index; the
loader stays a plain ``DataLoader`` so Lightning still injects its DDP sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from imgcls.data.workers import worker_init


class BatchTensorDataset(Dataset):
    """Inputs and int64 targets held as two tensors; ``__getitems__`` gathers a whole batch."""

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[idx], self.targets[idx]


class TensorImageDataset(BatchTensorDataset):
    """uint8 images ``(N, C, H, W)`` with int64 targets (``-1`` where unlabeled)."""

    def __init__(self, images: Tensor, targets: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        if targets is None:
            targets = torch.full((len(images),), -1, dtype=torch.long)
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        super().__init__(images.contiguous(), targets.long())

    @property
    def images(self) -> Tensor:
        return self.inputs

    def subset(self, indices: Tensor) -> TensorImageDataset:
        return TensorImageDataset(self.images[indices], self.targets[indices])


def keep_batch(batch: Any) -> Any:
    """Collate function for ``__getitems__`` datasets: the batch is already stacked."""
    return batch


def batch_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    collate_fn: Callable[[Any], Any] = keep_batch,
) -> DataLoader:
    """Workers persist across epochs and start with ``worker_init``; a plain DataLoader, so
    Lightning injects its DDP sampler."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )
