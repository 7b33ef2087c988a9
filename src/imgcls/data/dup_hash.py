"""Image hashes for the leakage checks, computed in torch on batches of decoded pixels.

``exact``: a 64-bit BLAKE2 digest of the uint8 pixels (the same decoded image, bit for bit).
``phash``: the 64-bit DCT perceptual hash (sign of the 8x8 lowest frequencies of a 32x32 gray
thumbnail against their median): resizing or re-encoding flips few of its bits.
``thumb``: that 32x32 gray thumbnail (uint8). Similar-looking but distinct images share hashes
(MNIST's many upright 1s), so a pair the hash index proposes counts only if no thumbnail pixel
differs by more than ``max_diff`` times the image's RMS contrast. Pairs are found with a
multi-index over 16-bit chunks of the hash (Norouzi et al., 2012), not by all-pairs comparison."""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

SIDE = 32
_BITS = torch.tensor([1 << i for i in range(63)] + [-(1 << 63)], dtype=torch.int64)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)
# two fixed bit orders: each chunk mixes low and high frequencies (MNIST's low ones agree a lot)
_PERMS = [torch.randperm(64, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]


def _dct_matrix(n: int) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


_DCT = _dct_matrix(SIDE)


@dataclass
class Hashes:
    """Per image of one split: digests, perceptual hashes, thumbnails, names and labels."""

    exact: Tensor  # int64 (N,)
    phash: Tensor  # int64 (N,)
    thumb: Tensor  # uint8 (N, SIDE * SIDE)
    names: list[str] = field(default_factory=list)
    labels: Tensor | None = None  # int64 (N,), -1 unlabeled

    def to_dict(self) -> dict:
        return dict(exact=self.exact, phash=self.phash, thumb=self.thumb,
                    names=list(self.names), labels=self.labels)  # fmt: skip


def gray_thumbnails(images: Tensor) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> float ``(N, 32, 32)`` gray 0..255: resized as uint8 first
    (torchvision's vectorized antialiased kernel), then weighted to gray."""
    x = TF.resize(images, [SIDE, SIDE], antialias=True).float()
    if x.shape[1] == 3:
        return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    return x.mean(1)


def perceptual(gray: Tensor) -> Tensor:
    """``(N, 32, 32)`` gray -> 64-bit pHash as int64 ``(N,)``."""
    low = (_DCT @ gray @ _DCT.T)[:, :8, :8].reshape(len(gray), 64)
    bits = low > low[:, 1:].median(1, keepdim=True).values  # DC left out of the median
    return (bits.long() * _BITS).sum(1)


def digest(row: Tensor) -> int:
    """64-bit digest of a uint8 tensor's bytes (shape included)."""
    h = hashlib.blake2b(repr(tuple(row.shape)).encode(), digest_size=8)
    h.update(row.contiguous().numpy().data)
    return int.from_bytes(h.digest(), "little", signed=True)


def hash_images(images: Tensor, batch: int = 4096, threads: int = 2) -> Hashes:
    """Hashes of uint8 ``(N, C, H, W)`` (in memory or memory-mapped), a batch at a time."""
    n = len(images)
    exact, phash = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    thumb = torch.empty(n, SIDE * SIDE, dtype=torch.uint8)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # hashlib releases the GIL
        for s in range(0, n, batch):
            x = images[s : s + batch]
            exact[s : s + len(x)] = torch.tensor(list(pool.map(digest, x)), dtype=torch.int64)
            gray = gray_thumbnails(x)
            phash[s : s + len(x)] = perceptual(gray)
            thumb[s : s + len(x)] = gray.round().clamp(0, 255).flatten(1).to(torch.uint8)
    return Hashes(exact, phash, thumb)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Bit differences of int64 hashes, elementwise (SWAR popcount)."""
    x = a ^ b
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56) & 0xFF


def _permuted_chunks(h: Tensor, perm: Tensor) -> Tensor:
    """``(N, 4)`` 16-bit chunks of ``h`` with its bits reordered by ``perm``."""
    bits = ((h[:, None] >> perm) & 1).view(-1, 4, 16)
    return (bits << torch.arange(16)).sum(2)


def candidate_pairs(a: Tensor, b: Tensor, max_bits: int) -> Tensor:
    """Index pairs ``(i, j)`` (``(P, 2)``) with ``hamming(a[i], b[j]) <= max_bits``.

    A pair sharing one of the 16-bit chunks exactly is a candidate: all pairs within 3 bits
    are found (pigeonhole), farther ones with high probability under two bit orders. The cost
    follows the candidates (a sort-merge join), not ``len(a) * len(b)``."""
    if not len(a) or not len(b):
        return torch.empty(0, 2, dtype=torch.long)
    found = []
    bc = [_permuted_chunks(b, perm).T.contiguous() for perm in _PERMS]
    for perm, cb in zip(_PERMS, bc, strict=True):
        ca = _permuted_chunks(a, perm)
        for j in range(4):
            keys, order = torch.sort(ca[:, j])
            lo = torch.searchsorted(keys, cb[j], right=False)
            counts = torch.searchsorted(keys, cb[j], right=True) - lo
            rows = torch.repeat_interleave(torch.arange(len(b)), counts)
            start = torch.cumsum(counts, 0) - counts
            i = order[lo[rows] + torch.arange(len(rows)) - start[rows]]
            found.append((i * len(b) + rows)[hamming(a[i], b[rows]) <= max_bits])
    key = torch.unique(torch.cat(found))
    return torch.stack([key // len(b), key % len(b)], 1)


def _stats(thumb: Tensor) -> tuple[Tensor, Tensor]:
    """Per-thumbnail mean and 1 / RMS contrast, ``(N, 1)`` each."""
    x = thumb.float()
    mean = x.mean(1, keepdim=True)
    return mean, 1 / (x - mean).pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6)


def thumbnail_diff(
    a: Tensor, b: Tensor, sa: tuple[Tensor, Tensor], sb: tuple[Tensor, Tensor]
) -> Tensor:
    """Largest pixel difference of gray thumbnails after removing each one's mean and
    contrast (``_stats``), in units of that contrast (0: the same picture)."""
    return ((a.float() - sa[0]) * sa[1] - (b.float() - sb[0]) * sb[1]).abs().amax(1)


def near_pairs(a: Hashes, b: Hashes, max_bits: int, max_diff: float) -> Tensor:
    """Pairs within ``max_bits`` whose thumbnails differ by at most ``max_diff`` (exact
    duplicates included: callers drop those). The 8x8 means of the normalized thumbnails
    differ by at most as much: they screen the candidates first, 16 times cheaper."""
    pairs = candidate_pairs(a.phash, b.phash, max_bits)
    if not len(pairs):
        return pairs
    stats = [_stats(h.thumb) for h in (a, b)]
    coarse = [
        F.avg_pool2d(((h.thumb.float() - m) * r).view(-1, 1, SIDE, SIDE), 4).flatten(1).half()
        for h, (m, r) in zip((a, b), stats, strict=True)
    ]
    keep = []
    for p in pairs.split(1 << 16):
        i, j = p[:, 0], p[:, 1]
        ok = (coarse[0][i].float() - coarse[1][j].float()).abs().amax(1) <= max_diff
        i, j = i[ok], j[ok]
        sa, sb = (stats[0][0][i], stats[0][1][i]), (stats[1][0][j], stats[1][1][j])
        ok[ok.clone()] = thumbnail_diff(a.thumb[i], b.thumb[j], sa, sb) <= max_diff
        keep.append(ok)
    return pairs[torch.cat(keep)]
