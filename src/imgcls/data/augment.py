"""Modern batch recipes from torchvision transforms v2 for the memory data path.

``PerSample`` runs a v2 transform (TrivialAugmentWide, RandAugment, RandomErasing) on chunks of a
training batch in pixel space: v2 draws one op per call, so a batch call gives all samples one op.
``BatchMix`` applies MixUp / CutMix to the normalized batch, making soft targets of
``num_classes`` (known only after data set-up)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from imgcls.errors import ConfigError


class PerSample(nn.Module):
    """``transform`` on chunks of ``chunk_size`` samples sharing one draw. ``uint8``: hand it
    uint8 pixels (auto-augment ops assume 0..1 on floats) and return the batch's dtype."""

    def __init__(self, transform: nn.Module, chunk_size: int = 1, uint8: bool = True) -> None:
        super().__init__()
        if int(chunk_size) < 1:
            raise ConfigError(f"data.train_augment.chunk_size must be >= 1, got {chunk_size}")
        self.transform = transform
        self.chunk_size = int(chunk_size)
        self.uint8 = bool(uint8)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if self.uint8 and dtype != torch.uint8:
            x = x.round().clamp_(0, 255).to(torch.uint8)
        out = torch.cat([self.transform(c) for c in x.split(self.chunk_size)])
        return out.to(dtype) if out.dtype != dtype else out


class BatchMix(nn.Module):
    """MixUp and/or CutMix (alpha 0: off) on a batch with probability ``p``; with both on,
    CutMix is chosen with ``cutmix_prob``. Unmixed batches get one-hot float targets, so every
    training batch has ``(N, num_classes)`` targets."""

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        p: float = 1.0,
        cutmix_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ConfigError("data.batch_mix needs mixup_alpha > 0 or cutmix_alpha > 0")
        if not 0.0 <= p <= 1.0 or not 0.0 <= cutmix_prob <= 1.0:
            raise ConfigError(
                f"data.batch_mix p and cutmix_prob must be in [0, 1]: {p}, {cutmix_prob}"
            )
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.p, self.cutmix_prob = float(p), float(cutmix_prob)
        self._mix: nn.Module | None = None
        self._num_classes = 0

    def _build(self, num_classes: int) -> nn.Module:
        ops: list[nn.Module] = []
        probs: list[float] = []
        if self.mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=num_classes))
            probs.append(1.0 - self.cutmix_prob if self.cutmix_alpha > 0 else 1.0)
        if self.cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=num_classes))
            probs.append(self.cutmix_prob if self.mixup_alpha > 0 else 1.0)
        return ops[0] if len(ops) == 1 else v2.RandomChoice(ops, p=probs)

    def forward(self, images: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        if self._mix is None or self._num_classes != num_classes:
            self._mix, self._num_classes = self._build(num_classes), num_classes
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return images, nn.functional.one_hot(targets, num_classes).to(images.dtype)
        return self._mix(images, targets)

    def extra_repr(self) -> str:
        return (
            f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, p={self.p}, "
            f"cutmix_prob={self.cutmix_prob}"
        )
