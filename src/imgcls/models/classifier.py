"""ImageClassifier: one LightningModule for every net: cross-entropy, torchmetrics, and the
optimizer and scheduler from config. It stores what rebuilds it as plain data, so a checkpoint
loads alone under ``weights_only=True``; the callbacks its options ask for (backbone unfreezing,
feature cache, re-planning a resumed scheduler) are attached by ``imgcls.builder``."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MaxMetric

from imgcls.data.spec import DataSpec
from imgcls.engine import boundary
from imgcls.engine.checkpoints.load import load_safe_classifier
from imgcls.engine.checkpoints.restore import check_restored
from imgcls.errors import ConfigError
from imgcls.models.metrics import StageMetrics, check_tta
from imgcls.models.schedules import build_scheduler
from imgcls.models.transfer import transfer_plan
from imgcls.utils.config import to_plain


class ImageClassifier(L.LightningModule):
    """Any net (``configs/model/``) sized by ``spec`` (the training ``DataSpec``); composed configs
    are built by Hydra (``_partial_``, nested targets), a checkpoint's by the trust boundary.
    ``calibrate``: a fitted ``temperature`` (``models.calibration``) divides eval logits."""

    # Lightning's entry points for a file (so also a notebook's) go through the trust boundary:
    # the stored config is checked as data before anything is built or restored
    load_from_checkpoint = classmethod(load_safe_classifier)  # type: ignore[assignment,var-annotated]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_restored(self, checkpoint)

    def __init__(
        self, net: Mapping[str, Any], spec: Mapping[str, Any], optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None, scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss", label_smoothing: float = 0.0,
        channels_last: bool = True, compile: bool = False, weights: str | None = None,
        cache_features: bool | str = False, unfreeze_at_epoch: int | None = None,
        backbone_lr_ratio: float = 0.1, cache_dir: str | None = None, tta: str | None = None,
        calibrate: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        given = dict(zip(boundary.ROLES, (net, optimizer, scheduler), strict=True))
        self._composed = {role: isinstance(cfg, DictConfig) for role, cfg in given.items()}
        self.save_hyperparameters({
            **{role: to_plain(cfg) for role, cfg in given.items()},
            "spec": to_plain(spec), "scheduler_interval": scheduler_interval,
            "scheduler_monitor": scheduler_monitor, "label_smoothing": float(label_smoothing),
            "channels_last": bool(channels_last), "compile": bool(compile),
            "cache_features": cache_features, "unfreeze_at_epoch": unfreeze_at_epoch,
            "backbone_lr_ratio": float(backbone_lr_ratio), "tta": check_tta(tta),
            "calibrate": bool(calibrate),
        })  # fmt: skip
        self.spec = DataSpec.from_dict(self.hparams["spec"])
        make_net = self.factory("net", self.hparams["net"], "model.net")
        pretrained = {} if weights is None else {"weights": weights}  # a location: not stored
        built: nn.Module = make_net(**self.spec.net_sizes(), **pretrained)
        self.net = built.to(memory_format=torch.channels_last) if channels_last else built
        self.cache_dir, self.tta = cache_dir, self.hparams["tta"]  # eval/predict may set tta
        transfer_plan(self.net, self.hparams)  # bad option combinations fail here, not mid-fit
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
        self.calibrated, k = bool(calibrate), self.spec.num_classes
        self.train_metrics, self.val_metrics = StageMetrics(k, "train"), StageMetrics(k, "val")
        self.test_metrics = StageMetrics(k, "test", uncalibrated=self.calibrated)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best validation accuracy
        if self.calibrated:
            self.register_buffer("temperature", torch.ones(()))

    def factory(self, role: str, cfg: Mapping[str, Any], path: str) -> Any:
        return boundary.factory(cfg, role, path, composed=self._composed[role])

    @property
    def backbone(self) -> nn.Module | None:  # where Lightning's BackboneFinetuning looks
        return getattr(self.net, "backbone", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams["channels_last"] and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.net(x)
        return logits / self.temperature if self.calibrated and not self.training else logits

    def tta_logits(self, x: Tensor) -> Tensor:
        """Logits, or with ``tta=flip`` the log of the mean softmax of ``x`` and its flip."""
        if check_tta(self.tta) is None:
            return self(x)
        probs = (torch.softmax(self(x), 1) + torch.softmax(self(x.flip(-1)), 1)) / 2
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def _step(self, logits: Tensor, y: Tensor, stage: str) -> Tensor:
        loss = self.criterion(logits, y)
        # one host check a step (a GPU's only sync): a NaN stops the run before a checkpoint has it
        if stage == "train" and not torch.isfinite(loss):
            where = f"global step {self.global_step} (epoch {self.current_epoch})"
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at {where}")
        metrics: StageMetrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, y, loss, getattr(self, "temperature", None))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(self(batch[0]), batch[1], "train")
        # Lightning writes step metrics every log_every_n_steps; logging others costs a few %
        if (self.global_step + 1) % getattr(self.trainer, "log_every_n_steps", 50) == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self._step(logits := self(batch[0]), batch[1], "val")
        return logits  # for callbacks (e.g. diagnostics) that need predictions without a re-run

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        if not self.trainer.sanity_checking:  # sanity batches must not set the best score
            self.val_acc_best.update(values["val/acc"])
            values["val/acc_best"] = self.val_acc_best.compute()
        self.log_dict(values, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self._step(logits := self.tta_logits(batch[0]), batch[1], "test")
        return logits

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self.tta_logits(x), dim=1)

    def configure_optimizers(self) -> Any:
        if not (params := [p for p in self.parameters() if p.requires_grad]):
            raise ConfigError("the model has no trainable parameters")
        optimizer = self.factory("optimizer", self.hparams["optimizer"], "model.optimizer")(params)
        if not (sched := self.hparams["scheduler"]):
            return optimizer
        interval, monitor = self.hparams["scheduler_interval"], self.hparams["scheduler_monitor"]
        make = partial(self.factory, "scheduler")
        scheduler = build_scheduler(sched, optimizer, self.trainer, interval, make)
        config = {"scheduler": scheduler, "interval": interval, "monitor": monitor}
        return {"optimizer": optimizer, "lr_scheduler": config}
