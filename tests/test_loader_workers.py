"""Loader workers: a worker's heap stays flat over an epoch of decodes, and per-rank worker
seeding under ``seed_everything(workers=True)`` still happens although the loaders set a
``worker_init_fn``."""

from __future__ import annotations

import ctypes
import io
import sys

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from imgcls.data.tensor_dataset import batch_loader
from imgcls.engine.streaming.loader import StreamOptions, train_decoder


class _MallInfo2(ctypes.Structure):
    _names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in _names.split()]


def _malloc_held_kb() -> int:
    """What this process's malloc holds from the OS (brk heap + mmapped chunks), kB: unlike its
    private dirty pages this leaves out the parent's pages a worker copies on write."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.arena + info.hblkhd) // 1024


class EncodedJpegs(Dataset):
    """``n`` 256x256 RGB JPEGs (8 distinct encodings) decoded and randomly cropped per sample,
    as the stream path does; each sample also carries what its worker's malloc holds."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.n, self.blobs = n, []
        for _ in range(8):
            buf = io.BytesIO()
            noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(noise).save(buf, format="JPEG", quality=90)
            self.blobs.append(buf.getvalue())
        self.decode = train_decoder(StreamOptions("random_resized_crop"), (128, 128), 3)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.decode(f"blob{i}", self.blobs[i % 8])
        return image.contiguous(), _malloc_held_kb()


def _collate(samples):
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (mallinfo2)")
def test_worker_heap_does_not_grow_with_the_epoch():
    """Without the fixed malloc thresholds this worker's malloc grew 171 MB over these 4000
    decoded 256x256 JPEGs in two runs (glibc's dynamic mmap threshold; over 2000 it was once
    only 27 MB), with them 1-4 MB."""
    loader = batch_loader(EncodedJpegs(4000), 64, False, num_workers=1, collate_fn=_collate)
    held = [int(kb.max()) for _, kb in loader]  # the worker's malloc, kB, per batch
    early, late = max(held[2:6]), max(held[-4:])
    assert late - early < 25 * 1024, f"worker heap grew {(late - early) / 1024:.0f} MB: {held}"


class Noise(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(3)


def test_workers_are_seeded_per_rank_by_seed_everything(monkeypatch):
    """A set ``worker_init_fn`` stops Lightning adding its own; ours must seed as it would, with
    the global rank mixed in (else every DDP rank draws the same augmentations): one seed and
    rank draw the same numbers twice, another rank draws others."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    def draws(seed: int, rank: int) -> torch.Tensor:
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        L.seed_everything(seed, workers=True, verbose=False)
        loader = batch_loader(Noise(), 4, False, num_workers=2, collate_fn=torch.stack)
        return torch.cat(list(loader))

    a = draws(7, rank=0)
    assert torch.equal(a, draws(7, rank=0))
    assert not torch.equal(a, draws(7, rank=1))
    assert not torch.equal(a, draws(8, rank=0))
