"""TensorBoard diagnostics: confusion matrix, per-class precision/recall/F1, misclassified images,
reliability diagram.

Accuracy alone hides *which* classes fail and *how*. The logits ``validation_step``/``test_step``
return (no second forward) feed torchmetrics state on the device; at the end of a validation epoch
(every ``every_n_epochs``) and of a test run: ``<stage>/confusion_matrix``, ``<stage>/per_class``,
``<stage>/f1_macro``, ``<stage>/misclassified`` (image grid), ``<stage>/reliability``."""

from __future__ import annotations

import logging
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from imgcls.data.spec import DataSpec
from imgcls.runs.figures import to_display_uint8

log = logging.getLogger(__name__)

PER_CLASS = ("precision", "recall", "f1")


def _spec(pl_module: L.LightningModule) -> DataSpec:
    return cast(DataSpec, pl_module.spec)


def per_class_table(class_names: list[str], values: dict[str, Tensor], support: Tensor) -> str:
    """Markdown table of per-class precision/recall/F1 with support, plus the macro averages."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    p, r, f = values["precision"], values["recall"], values["f1"]
    for i, name in enumerate(class_names):
        lines.append(f"| {name} | {p[i]:.4f} | {r[i]:.4f} | {f[i]:.4f} | {int(support[i])} |")
    macro = (
        f"| **macro** | {p.mean():.4f} | {r.mean():.4f} | {f.mean():.4f} | {int(support.sum())} |"
    )
    return "\n".join([*lines, macro])


RELIABILITY_BINS = 15  # as MulticlassCalibrationError's ECE


class ClassificationDiagnostics(L.Callback):
    """Writes the diagnostics every ``every_n_epochs`` (and the last epoch; 0: never) and at
    test (``on_test``). The ``max_misclassified`` grid images are a seeded reservoir per true
    class taken one class after the other, so a class-sorted split does not fill it with one
    class's errors. ``results[stage]`` keeps the last values and the ``report_mistakes`` most
    confident errors for report.html."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        on_test: bool = True,
        max_misclassified: int = 32,
        grid_columns: int = 8,
        report_mistakes: int = 16,
    ) -> None:
        super().__init__()
        self.every_n_epochs = int(every_n_epochs)
        self.on_test = bool(on_test)
        self.max_misclassified = int(max_misclassified)
        self.grid_columns = int(grid_columns)
        self.report_mistakes = int(report_mistakes)
        # per stage, the last values written: report.html's confusion matrix, table, mistakes
        self.results: dict[str, dict[str, Any]] = {}
        self._top: list[tuple[float, Tensor, int, int]] = []
        self.metrics: MetricCollection | None = None
        self._active = False
        self._pool: dict[int, list[tuple[Tensor, int, int, float]]] = {}
        self._seen: dict[int, int] = {}
        self._rng = torch.Generator()
        self._bins = torch.zeros(3, RELIABILITY_BINS, dtype=torch.float64)
        self._warned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        k = _spec(pl_module).num_classes
        # the model's own logits and validated labels: the checks would cost more than the update
        opts: dict[str, Any] = {"num_classes": k, "validate_args": False}
        self.metrics = MetricCollection(
            {
                "confusion": MulticlassConfusionMatrix(**opts),
                "precision": MulticlassPrecision(average="none", **opts),
                "recall": MulticlassRecall(average="none", **opts),
                "f1": MulticlassF1Score(average="none", **opts),
            }
        ).to(pl_module.device)

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        return epoch % self.every_n_epochs == 0 or last

    def _start(self, pl_module: L.LightningModule) -> None:
        assert self.metrics is not None
        self.metrics.to(pl_module.device)
        self.metrics.reset()
        self._pool, self._seen, self._top = {}, {}, []
        self._bins = torch.zeros(3, RELIABILITY_BINS, dtype=torch.float64, device=pl_module.device)
        self._rng.manual_seed(0)  # the same errors shown for the same predictions
        self._active = True

    def _collect(self, pl_module: L.LightningModule, outputs: Any, batch: Any) -> None:
        if not self._active:
            return
        if not isinstance(outputs, Tensor):
            if not self._warned:
                log.warning("diagnostics: the step returned no logits; nothing to show")
                self._warned = True
            return
        assert self.metrics is not None
        x, y = batch[0], batch[1]
        logits = outputs.detach()
        preds = logits.argmax(1)
        self.metrics.update(preds, y)
        conf = logits.float().softmax(1).amax(1)
        b = (conf * RELIABILITY_BINS).long().clamp(max=RELIABILITY_BINS - 1)
        ones = (torch.ones_like(conf), conf, (preds == y).float())
        self._bins.index_add_(1, b, torch.stack(ones).to(self._bins))
        # cached features (not images) cannot be shown
        is_image = x.ndim == 4 and x.shape[1] == _spec(pl_module).in_channels
        if (self.max_misclassified > 0 or self.report_mistakes > 0) and is_image:
            self._sample_errors(pl_module, x, y, preds, logits)

    def _sample_errors(
        self, pl_module: L.LightningModule, x: Tensor, y: Tensor, preds: Tensor, logits: Tensor
    ) -> None:
        """Reservoir-sample this batch's errors per true class (images kept as display uint8)."""
        idx = (preds != y).nonzero().flatten()
        if not len(idx):
            return
        spec = _spec(pl_module)
        # twice a fair share per class: fills the grid when some classes have few errors, with
        # bounded memory (display uint8) for many classes
        n = self.max_misclassified
        cap = 2 * -(-n // max(1, min(spec.num_classes, n)))
        conf = logits[idx].float().softmax(1).gather(1, preds[idx, None]).flatten().cpu()
        images = to_display_uint8(x[idx], spec.mean, spec.std)
        self._keep_most_confident(images, y[idx].tolist(), preds[idx].tolist(), conf)
        for j, (t, p) in enumerate(zip(y[idx].tolist(), preds[idx].tolist(), strict=True)):
            seen = self._seen.get(t, 0)
            self._seen[t] = seen + 1
            pool = self._pool.setdefault(t, [])
            item = (images[j], t, p, float(conf[j]))
            if len(pool) < cap:
                pool.append(item)
            else:
                k = int(torch.randint(0, seen + 1, (1,), generator=self._rng))
                if k < cap:
                    pool[k] = item

    def _keep_most_confident(self, images: Tensor, y: list, preds: list, conf: Tensor) -> None:
        """The ``report_mistakes`` errors made with the highest confidence so far."""
        new = [(float(c), images[j], y[j], preds[j]) for j, c in enumerate(conf.tolist())]
        merged = sorted(self._top + new, key=lambda item: -item[0])
        self._top = merged[: self.report_mistakes]

    def _grid_errors(self) -> list[tuple[Tensor, int, int, float]]:
        """Up to ``max_misclassified`` sampled errors, one true class after the other."""
        pools = [list(self._pool[c]) for c in sorted(self._pool)]
        chosen: list[tuple[Tensor, int, int, float]] = []
        while len(chosen) < self.max_misclassified and any(pools):
            for pool in pools:
                if pool and len(chosen) < self.max_misclassified:
                    chosen.append(pool.pop(0))
        return chosen

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = False
        if self._due(trainer):
            self._start(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = False
        if self.on_test:
            self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args: Any) -> None:
        self._collect(pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *args: Any) -> None:
        self._collect(pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active:
            return
        self._active = False
        assert self.metrics is not None
        values = self.metrics.compute()  # every rank: torchmetrics syncs the state across ranks
        self.metrics.reset()
        # a float: the value is already synced across ranks (no sync_dist, no warning about it)
        pl_module.log(f"{stage}/f1_macro", float(values["f1"].mean()))
        names = list(_spec(pl_module).class_names)
        cm = values["confusion"].cpu()
        self.results[stage] = {
            "split": stage,
            "classes": names,
            "confusion": cm.tolist(),
            # rounded once here: metrics.json and report.html show these same numbers
            **{k: [round(float(v), 6) for v in values[k].cpu()] for k in PER_CLASS},
            "support": cm.sum(1).tolist(),
            "mistakes": [(img, names[t], names[p], c) for c, img, t, p in self._top],
        }
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None or not trainer.is_global_zero:
            self._pool = {}
            return
        from imgcls.runs.figures import (
            confusion_matrix_image,
            image_grid,
            png_bytes,
            png_tensor,
            reliability_figure,
        )

        # the step Lightning gives the epoch's scalars, so images line up with the curves
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        exp = tb.experiment
        title = f"{stage} confusion matrix, step {step}"
        exp.add_image(f"{stage}/confusion_matrix", confusion_matrix_image(cm, names, title), step)
        per_class = {k: values[k].cpu() for k in PER_CLASS}
        exp.add_text(f"{stage}/per_class", per_class_table(names, per_class, cm.sum(1)), step)
        errors = self._grid_errors()
        if errors:
            captions = [f"true {names[t]}\npred {names[p]} ({c:.0%})" for _, t, p, c in errors]
            images = torch.stack([e[0] for e in errors])
            grid = image_grid(images, captions, self.grid_columns)
            exp.add_image(f"{stage}/misclassified", grid, step)
        self._pool = {}
        exp.add_image(
            f"{stage}/reliability",
            png_tensor(png_bytes(reliability_figure(self._bins.cpu(), stage))),
            step,
        )
        exp.flush()
