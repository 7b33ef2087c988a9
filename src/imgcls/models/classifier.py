"""ImageClassifier: one LightningModule for every net: loss, metrics, optimizer from config.

It stores all it needs to rebuild itself as plain containers in the checkpoint, so
``ImageClassifier.load_from_checkpoint(path)`` works alone and under ``weights_only=True``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from imgcls.checkpointing import boundary
from imgcls.data.spec import DataSpec
from imgcls.errors import ConfigError
from imgcls.models.schedules import build_scheduler
from imgcls.models.transfer import transfer_callbacks, transfer_plan
from imgcls.utils.config import to_plain

log = logging.getLogger(__name__)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class RunningSum(Metric):
    """A rank-synced running mean: torchmetrics' general classes validate inputs every update,
    which costs small nets measurable throughput; epoch accuracy and loss need two sums."""

    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, total: Tensor, count: int) -> None:
        self.total += total.detach().double()
        self.count += count

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


TTA_MODES = ("flip",)


def check_tta(tta: str | None) -> str | None:
    """``None``/``none`` or a mode of ``TTA_MODES``; anything else is a ``ConfigError``."""
    if tta is None or str(tta).lower() in ("none", "null", "false"):
        return None
    if tta not in TTA_MODES:
        raise ConfigError(f"tta={tta!r}: expected one of none, {', '.join(TTA_MODES)}")
    return str(tta)


def eval_metrics(k: int, prefix: str) -> MetricCollection:
    m: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes=k, average="micro"),
        "ece": MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1"),
    }
    if k > 5:
        m["acc_top5"] = MulticlassAccuracy(num_classes=k, top_k=5, average="micro")
    return MetricCollection(m, prefix=prefix)


class ImageClassifier(L.LightningModule):
    """Cross-entropy classifier around any net of ``imgcls.models.nets`` (``configs/model/``).

    The net's sizes come from ``spec`` (the training ``DataSpec``). ``net``, ``optimizer`` and
    ``scheduler`` as the user's composed config (``DictConfig``) are built by Hydra
    (``_partial_``, nested targets); as plain data (a checkpoint's) through the trust boundary.
    They are stored as plain data. ``weights`` and ``cache_dir`` are not stored: the checkpoint
    holds the trained weights and a location is no hyper-parameter.
    ``tta=flip`` averages the softmax of image and h-flip (off: digits are not flip-symmetric);
    run length and OneCycle's ``max_lr`` are filled in by ``imgcls.models.schedules``."""

    _train_sums: Tensor | None

    def __init__(
        self,
        net: Mapping[str, Any],
        spec: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
        weights: str | None = None,
        cache_features: bool | str = False,
        unfreeze_at_epoch: int | None = None,
        backbone_lr_ratio: float = 0.1,
        cache_dir: str | None = None,
        tta: str | None = None,
        calibrate: bool = False,
    ) -> None:
        super().__init__()
        hparams = {
            "net": to_plain(net),
            "spec": to_plain(spec if not isinstance(spec, DataSpec) else spec.to_dict()),
            "optimizer": to_plain(optimizer),
            "scheduler": to_plain(scheduler),
            "scheduler_interval": scheduler_interval,
            "scheduler_monitor": scheduler_monitor,
            "label_smoothing": float(label_smoothing),
            "channels_last": bool(channels_last),
            "compile": bool(compile),
            "cache_features": cache_features,
            "unfreeze_at_epoch": unfreeze_at_epoch,
            "backbone_lr_ratio": float(backbone_lr_ratio),
            "tta": check_tta(tta),
            "calibrate": bool(calibrate),
        }
        # which roles come from the user's composed config (built by Hydra as Hydra users expect)
        given = dict(zip(boundary.ROLES, (net, optimizer, scheduler), strict=True))
        self._composed = {k: isinstance(v, DictConfig) for k, v in given.items()}
        self._check_stored(hparams, given)
        self.save_hyperparameters(hparams)
        self.spec = DataSpec.from_dict(hparams["spec"])
        sizes = {
            "in_channels": self.spec.in_channels,
            "num_classes": self.spec.num_classes,
            "image_size": list(self.spec.image_size),
            **({"weights": weights} if weights is not None else {}),
        }
        self.net: nn.Module = self.factory("net", hparams["net"], "model.net")(**sizes)
        self.cache_dir = cache_dir
        self.tta = hparams["tta"]  # eval/predict may set another (cfg.tta)
        transfer_plan(self.net, hparams)  # bad option combinations fail here, not mid-fit
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._add_metrics(bool(calibrate))

    def _check_stored(self, hparams: dict[str, Any], given: dict[str, Any]) -> None:
        """What a checkpoint will hold must pass the trust boundary: a plain (stored) config is
        refused; the user's composed one only warns (Hydra built it, a file never will)."""
        try:
            boundary.check_classifier(hparams, "model")
        except boundary.UnsafeCheckpointError as e:
            if not all(self._composed[k] for k, v in given.items() if v is not None):
                raise
            log.warning("eval/predict/export will refuse this model's checkpoints: %s", e)

    def _add_metrics(self, calibrate: bool) -> None:
        """Epoch metrics; ``calibrate``: the ``temperature`` buffer, fitted on val after training
        (``imgcls.models.calibration``) and divided by in eval/test/predict."""
        self.train_acc, self.train_loss = RunningSum(), RunningSum()
        self.val_metrics = eval_metrics(self.spec.num_classes, "val/")
        self.test_metrics = eval_metrics(self.spec.num_classes, "test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best validation accuracy
        self.calibrated = calibrate
        if calibrate:
            self.register_buffer("temperature", torch.ones(()))
            self.test_ece_uncalibrated = MulticlassCalibrationError(self.spec.num_classes, 15)

    def factory(self, role: str, cfg: Mapping[str, Any], path: str) -> Any:
        """``cfg``'s class with its values, waiting for the caller's arguments."""
        if self._composed[role]:
            return instantiate(cfg, _partial_=True, _convert_="all")
        return boundary.factory(cfg, role, path)

    @property
    def backbone(self) -> nn.Module | None:
        """Where Lightning's ``BackboneFinetuning`` looks for it."""
        return getattr(self.net, "backbone", None)

    def configure_callbacks(self) -> list[L.Callback]:
        from imgcls.checkpointing.resume import ReplanSchedulerOnResume

        return [*transfer_callbacks(self), ReplanSchedulerOnResume()]

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifier:
        """Lightning's, with the stored config validated as data first."""
        from imgcls.checkpointing.load import load_safe_classifier

        return load_safe_classifier(
            cls, checkpoint_path, map_location, strict, weights_only, hparams_file, **kwargs
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """``trainer.fit(ckpt_path=...)``: refuse an unsafe stored config; accept weights saved
        by older versions under ``net._orig_mod.``."""
        from imgcls.checkpointing.load import check_loaded_checkpoint

        check_loaded_checkpoint(self, checkpoint)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.net(x)
        return logits / self.temperature if self.calibrated and not self.training else logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        # one host check a step (a GPU's only sync): a NaN stops the run before a checkpoint has it
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); lower the learning rate or "
                f"enable gradient clipping (trainer.gradient_clip_val)"
            )
        n = len(y)
        if y.ndim == 2:  # soft targets (data.batch_mix): accuracy against the dominant class
            y = y.argmax(1)
        # plain running sums (one fused add a step), into the synced RunningSums at epoch end
        step_sums = torch.stack(((logits.detach().argmax(1) == y).sum(), loss.detach() * n))
        sums = getattr(self, "_train_sums", None)
        if sums is None:
            sums = self._train_sums = torch.zeros_like(step_sums, dtype=torch.float64)
            self._train_count = 0
        sums.add_(step_sums)
        self._train_count += n
        # Lightning writes step metrics every log_every_n_steps; logging others costs a few %
        if (self.global_step + 1) % getattr(self.trainer, "log_every_n_steps", 50) == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_sums = None  # nothing left over from an interrupted epoch

    def on_train_epoch_end(self) -> None:
        sums = getattr(self, "_train_sums", None)
        if sums is not None:
            self.train_acc.update(sums[0], self._train_count)
            self.train_loss.update(sums[1], self._train_count)
            self._train_sums = None
        acc, loss = self.train_acc.compute(), self.train_loss.compute()
        self.train_acc.reset()
        self.train_loss.reset()
        self.log_dict({"train/acc": acc, "train/loss_epoch": loss}, prog_bar=True)

    def _eval_step(self, logits: Tensor, y: Tensor, stage: str) -> Tensor:
        getattr(self, f"{stage}_loss").update(self.criterion(logits, y), weight=len(y))
        getattr(self, f"{stage}_metrics").update(logits, y)
        return logits  # for callbacks (e.g. diagnostics) that need predictions without a re-run

    def _epoch_values(self, stage: str) -> dict[str, Tensor]:
        metrics, loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        values = {**metrics.compute(), f"{stage}/loss": loss.compute()}
        metrics.reset()
        loss.reset()
        return values

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(self(batch[0]), batch[1], "val")

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_values("val")
        if not self.trainer.sanity_checking:  # sanity batches must not set the best score
            self.val_acc_best.update(values["val/acc"])
            values["val/acc_best"] = self.val_acc_best.compute()
        self.log_dict(values, prog_bar=True)

    def tta_logits(self, x: Tensor) -> Tensor:
        """Logits, or with ``tta=flip`` the log of the mean softmax of ``x`` and its flip
        (softmax of it is that mean, so loss, accuracy and predictions all use the average)."""
        if check_tta(self.tta) is None:
            return self(x)
        probs = (torch.softmax(self(x), 1) + torch.softmax(self(x.flip(-1)), 1)) / 2
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits = self.tta_logits(batch[0])
        if self.calibrated:  # what the ECE was before temperature scaling
            self.test_ece_uncalibrated.update(logits * self.temperature, batch[1])
        return self._eval_step(logits, batch[1], "test")

    def on_test_epoch_end(self) -> None:
        values = self._epoch_values("test")
        if self.calibrated:
            values["test/ece_uncalibrated"] = self.test_ece_uncalibrated.compute()
            self.test_ece_uncalibrated.reset()
        self.log_dict(values)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self.tta_logits(x), dim=1)

    def setup(self, stage: str) -> None:
        trainable, total = count_parameters(self)
        log.info("parameters: %s trainable / %s total", f"{trainable:,}", f"{total:,}")
        if self.hparams["compile"] and stage == "fit":
            self.net.compile()  # in place: checkpoints keep the plain net's keys

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        optimizer = self.factory("optimizer", self.hparams["optimizer"], "model.optimizer")(params)
        sched_cfg = self.hparams["scheduler"]
        if not sched_cfg:
            return optimizer
        interval = self.hparams["scheduler_interval"]
        make = partial(self.factory, "scheduler")
        scheduler = build_scheduler(sched_cfg, optimizer, self.trainer, interval, make)
        monitor = self.hparams["scheduler_monitor"]
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": monitor},
        }
