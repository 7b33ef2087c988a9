"""Predict class names for images from a checkpoint alone: the task behind ``src/predict.py``.

The checkpoint carries the net config, class names and ``DataSpec``; the user names only it and
the images (``predict_inputs``). The forward pass runs through ``Trainer.predict``, so
``trainer.accelerator``/``precision`` mean what they mean for training. Unreadable files get a
row with an ``error`` unless ``on_error=stop``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig
from torch import Tensor

from imgcls.builder import build_trainer
from imgcls.errors import ConfigError, DataError
from imgcls.models.load import load_classifier, use_tta
from imgcls.runs.fingerprint import checkpoint_fingerprint, inputs_fingerprint, predict_line
from imgcls.runs.record import RunRecord, recorded
from imgcls.tasks.predict_inputs import InputList, PredictInputs, list_inputs
from imgcls.tasks.run import apply_extras

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "stop")
CONSOLE_ROWS = 20


class TopKCollector(BasePredictionWriter):
    """Keeps the top-k classes and probabilities of every batch (on the host, k per image)."""

    def __init__(self, k: int, stop_on_error: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.k, self.stop_on_error = int(k), bool(stop_on_error)
        self.batches: list[tuple[Tensor, Tensor, Tensor]] = []  # positions, top-k probs, indices
        self.errors: dict[int, str] = {}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Tensor,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        positions, errors = batch[1].cpu(), batch[2]
        for pos, err in zip(positions.tolist(), errors, strict=True):
            if err and self.stop_on_error:
                raise DataError(
                    f"{err} (on_error=skip predicts the other images and lists this one)"
                )
            if err:
                self.errors[pos] = err
        top_p, top_i = prediction.float().topk(self.k, dim=1)
        self.batches.append((positions, top_p.cpu(), top_i.cpu()))

    def table(self, inputs: InputList, class_names: Sequence[str]) -> pd.DataFrame:
        """One row per input in input order: id, pred, prob, top1..topk (+ _prob), error."""
        n = len(inputs.items)
        probs, idx = torch.zeros(n, self.k), torch.zeros(n, self.k, dtype=torch.long)
        if self.batches:
            order, top_p, top_i = (torch.cat(t) for t in zip(*self.batches, strict=True))
            probs[order], idx[order] = top_p, top_i
        ok = [i not in self.errors for i in range(n)]
        cols: dict[str, list[Any]] = {inputs.id_column: [it.id for it in inputs.items]}
        for j in range(self.k):
            pairs = zip(idx[:, j].tolist(), probs[:, j].tolist(), ok, strict=True)
            rows = [(class_names[i], p) if good else ("", None) for i, p, good in pairs]
            named, prob = [r[0] for r in rows], [r[1] for r in rows]
            if j == 0:
                cols["pred"], cols["prob"] = named, prob
            cols[f"top{j + 1}"], cols[f"top{j + 1}_prob"] = named, prob
        cols["error"] = [self.errors.get(i, "") for i in range(n)]
        return pd.DataFrame(cols)


def resolve_top_k(top_k: int | None, num_classes: int) -> int:
    """``top_k`` or min(5, classes); more than the model has is clamped with a warning."""
    if top_k is None:
        return min(5, num_classes)
    if int(top_k) < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1")
    if int(top_k) > num_classes:
        log.warning("top_k=%s but the model has %d classes: writing all", top_k, num_classes)
        return num_classes
    return int(top_k)


def _check_options(cfg: DictConfig) -> str:
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "predict needs a checkpoint: python src/predict.py ckpt_path=<file.ckpt> input=<images>"
        )
    if not cfg.get("input"):
        raise ConfigError(
            "predict needs input=<image file | folder of images | CSV of image names>"
        )
    on_error = str(cfg.get("on_error", "skip"))
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error={on_error!r} must be one of {ON_ERROR}")
    return on_error


def predict(cfg: DictConfig) -> dict[str, float]:
    """Predict every input image; writes ``predictions.csv`` (and ``submission.csv`` for a CSV)
    and run.json (with the inputs' fingerprint)."""
    apply_extras(cfg)
    on_error = _check_options(cfg)
    with recorded(cfg, "predict") as record:
        return _predict(cfg, on_error, record)


def _predict(cfg: DictConfig, on_error: str, record: RunRecord) -> dict[str, float]:
    model = use_tta(load_classifier(cfg.ckpt_path), cfg)
    spec = model.spec
    k = resolve_top_k(cfg.get("top_k"), spec.num_classes)
    csv_options = {
        name: cfg.get(name)
        for name in ("image_dir", "image_column", "extension", "allow_outside_root")
    }
    inputs = list_inputs(cfg.input, **csv_options)
    known = [item.error for item in inputs.items if item.error]
    if on_error == "stop" and known:  # missing files are cheap to find before any inference
        raise DataError(f"{known[0]} (on_error=skip predicts the others and lists it)")
    log.info(
        "predicting %d image(s) from %s with %s (%d classes, top %d)",
        *(len(inputs.items), inputs.source, cfg.ckpt_path, spec.num_classes, k),
    )
    fingerprint = inputs_fingerprint([i.path for i in inputs.items], [i.id for i in inputs.items])
    if line := predict_line(checkpoint_fingerprint(cfg.ckpt_path), fingerprint):
        log.info(line)
    collector = TopKCollector(k, stop_on_error=on_error == "stop")
    trainer, _, _ = build_trainer(cfg)
    record.attach(trainer, {"inputs": fingerprint})
    if trainer.world_size > 1:
        raise ConfigError(
            "predict writes rows in input order from one process: use trainer.devices=1"
        )
    trainer.callbacks.append(collector)  # type: ignore[attr-defined]
    dm = PredictInputs(inputs.items, spec, cfg.get("batch_size", 256), cfg.get("num_workers", 0))
    trainer.predict(model, datamodule=dm, return_predictions=False)
    table = collector.table(inputs, spec.class_names)
    metrics = write_outputs(cfg, inputs, table, collector.errors)
    metrics["predict/tta_flip"] = float(model.tta == "flip")
    record.finish()
    return metrics


def write_outputs(
    cfg: DictConfig, inputs: InputList, table: pd.DataFrame, errors: dict[int, str]
) -> dict[str, float]:
    """``predictions.csv``, the console summary, ``submission.csv`` and the CSV's accuracy."""
    if inputs.labels is not None:  # a labeled CSV: its labels beside the predictions
        table.insert(1, str(inputs.label_column), inputs.labels)
    out = Path(cfg.get("predictions_file") or Path(cfg.paths.output_dir) / "predictions.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.7g")
    failed = dict(sorted(errors.items()))
    log.info(
        "%s: %d row(s), %d predicted, %d failed%s",
        *(out, len(table), len(table) - len(failed), len(failed)),
        " (rows with an 'error')" if failed else "",
    )
    log.info("results:\n%s", results_table(table, inputs.id_column))
    if failed:
        log.warning("%d image(s) could not be read:", len(failed))
        for i, msg in list(failed.items())[:CONSOLE_ROWS]:
            log.warning("  %s: %s", inputs.items[i].id or inputs.items[i].where, msg)
    metrics = {"predict/images": float(len(table) - len(failed)), "predict/failed": len(failed)}
    if inputs.kind == "csv" and cfg.get("submission", True):
        if failed:
            raise DataError(missing_rows_message(inputs, failed, out))
        write_submission(cfg, inputs, table)
    if inputs.labels is not None:  # a labeled CSV: score it (unreadable rows count as wrong)
        correct = sum(p == t for p, t in zip(table["pred"], inputs.labels, strict=True))
        metrics["predict/acc"] = correct / len(table)
        log.info("accuracy against the CSV's labels: %.4f", metrics["predict/acc"])
    return {k: float(v) for k, v in metrics.items()}


def results_table(table: pd.DataFrame, id_column: str, limit: int = CONSOLE_ROWS) -> str:
    """The first ``limit`` rows as a short text table: id, predicted class, probability, error."""

    def short_id(rid: str) -> str:  # the end of a long path is the part that tells
        return rid if len(rid) <= 40 else "..." + rid[-37:]

    rows = [
        (short_id(str(r[id_column])), str(r["pred"]), r["prob"], str(r["error"]))
        for _, r in table.head(limit).iterrows()
    ]
    width = max([len(id_column), *(len(r[0]) for r in rows)])
    lines = [f"  {id_column:<{width}}  {'pred':<12} {'prob':>7}  error"]
    for rid, pred, prob, err in rows:
        p = f"{float(prob):.4f}" if prob is not None and prob == prob else ""
        short = err if len(err) <= 70 else err[:67] + "..."
        lines.append(f"  {rid:<{width}}  {pred[:12]:<12} {p:>7}  {short}")
    if len(table) > limit:
        lines.append(f"  ... and {len(table) - limit} more rows")
    return "\n".join(lines)


def missing_rows_message(inputs: InputList, failed: dict[int, str], out: Path) -> str:
    shown = [f"{inputs.items[i].id!r}: {msg}" for i, msg in list(failed.items())[:10]]
    more = f"; ... and {len(failed) - 10} more" if len(failed) > 10 else ""
    return (
        f"submission.csv not written: {len(failed)} of {len(inputs.items)} rows of {inputs.source} "
        f"have no prediction ({'; '.join(shown)}{more}); predictions for the others are in {out} "
        "(error column). Fix those rows, or pass submission=false"
    )


def write_submission(cfg: DictConfig, inputs: InputList, table: pd.DataFrame) -> Path:
    """``<id column>,label`` in the input CSV's row order (the Kaggle-style submission)."""
    out = Path(cfg.get("submission_file") or Path(cfg.paths.output_dir) / "submission.csv")
    label = str(cfg.get("submission_label_column") or "label")
    pd.DataFrame({inputs.id_column: table[inputs.id_column], label: table["pred"]}).to_csv(
        out, index=False
    )
    log.info("submission (%s,%s, %d rows) written to %s", inputs.id_column, label, len(table), out)
    return out
