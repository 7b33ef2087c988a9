"""What ``ImageClassifier`` measures per stage, and its test-time augmentation option."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from imgcls.errors import ConfigError


def stage_metrics(k: int, stage: str) -> MetricCollection:
    """Accuracy; val/test add top-5 (from 6 classes) and the calibration error (ECE, 15 bins).
    ``validate_args=False``: checking every batch's values costs small nets throughput."""
    m: dict[str, Any] = {"acc": MulticlassAccuracy(k, average="micro", validate_args=False)}
    if stage != "train":
        m["ece"] = MulticlassCalibrationError(k, n_bins=15, norm="l1", validate_args=False)
        if k > 5:
            m["acc_top5"] = MulticlassAccuracy(k, top_k=5, average="micro", validate_args=False)
    return MetricCollection(m, prefix=f"{stage}/")


def check_tta(tta: str | None) -> str | None:
    """``None``/``none``, or ``flip``: the mean softmax of image and h-flip (off by default:
    digits are not flip-symmetric)."""
    if tta is None or str(tta).lower() in ("none", "null", "false"):
        return None
    if tta != "flip":
        raise ConfigError(f"tta={tta!r}: expected none or flip")
    return "flip"


class StageMetrics(nn.Module):
    """One stage's epoch values: ``stage_metrics``, the mean loss and (``uncalibrated``) the ECE
    of the logits before temperature scaling; ``compute`` syncs them across ranks and resets."""

    def __init__(self, k: int, stage: str, uncalibrated: bool = False) -> None:
        super().__init__()
        self.stage, self.metrics = stage, stage_metrics(k, stage)
        # the default NaN check: torchmetrics 1.9 drops the weights under nan_strategy="disable"
        self.loss = MeanMetric()
        ece = MulticlassCalibrationError(k, n_bins=15, norm="l1", validate_args=False)
        self.uncalibrated = ece if uncalibrated else None

    def update(self, logits: Tensor, y: Tensor, loss: Tensor, temperature: Tensor | None) -> None:
        hard = y.argmax(1) if y.ndim == 2 else y  # soft targets (data.batch_mix): dominant class
        self.metrics.update(logits.detach(), hard)
        self.loss.update(loss.detach(), weight=len(y))
        if self.uncalibrated is not None and temperature is not None:
            self.uncalibrated.update(logits.detach() * temperature, hard)

    def compute(self) -> dict[str, Tensor]:
        loss_key = "train/loss_epoch" if self.stage == "train" else f"{self.stage}/loss"
        values = {**self.metrics.compute(), loss_key: self.loss.compute()}
        if self.uncalibrated is not None:
            values[f"{self.stage}/ece_uncalibrated"] = self.uncalibrated.compute()
        for metric in (self.metrics, self.loss, self.uncalibrated):
            if metric is not None:
                metric.reset()
        return values
