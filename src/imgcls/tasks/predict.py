"""Predict class names for images from a checkpoint alone: the task behind ``src/predict.py``.

The checkpoint carries the net config, the class names and the ``DataSpec`` (channels, size,
mean/std), so the user names only the checkpoint and the images. Images are decoded per batch
by the same function the datamodules use (``imgcls.data.images.load_image``) and normalized on
the device like every evaluation batch; the forward pass runs through ``Trainer.predict``, so
``trainer.accelerator``/``precision`` mean what they mean for training, and Lightning runs it
under ``torch.inference_mode``.

A file that cannot be read never stops the others unless asked (``on_error=stop``): it gets a
zero placeholder in its batch and a row with an ``error`` message in the output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from imgcls.builder import build_trainer
from imgcls.checkpointing.load import load_classifier, use_tta
from imgcls.data.images import IMAGE_EXTENSIONS, load_image
from imgcls.data.spec import DataSpec
from imgcls.data.streaming import load_for_eval
from imgcls.data.tensor_dataset import batch_loader
from imgcls.data.transforms import normalize
from imgcls.errors import ConfigError, DataError
from imgcls.tasks.run import apply_extras

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "stop")


# -- what to predict ---------------------------------------------------------------------------
@dataclass(frozen=True)
class InputItem:
    """One image to predict.

    Attributes:
        id: the key of its output row (path relative to the input folder, or the CSV id cell).
        path: the file to decode.
        where: location for messages, e.g. ``"test.csv row 7, column 'id'"``.
        error: why the row cannot be predicted, when the listing already knows.
    """

    id: str
    path: Path
    where: str = ""
    error: str = ""  # known before decoding (e.g. an empty CSV cell): reported, not decoded


@dataclass
class InputList:
    """The images to predict, in output order, and how the output names them."""

    items: list[InputItem]
    id_column: str
    kind: str  # "file" | "folder" | "csv"
    source: Path
    label_column: str | None = None  # a CSV's label column, when it has one (for scoring)
    labels: list[str] | None = None


def list_folder(folder: Path) -> InputList:
    """Every image file under ``folder`` (recursively), sorted by relative path.

    Raises:
        DataError: the folder holds no image file.
    """
    # os.walk and string paths: pathlib's rglob/relative_to cost more than decoding for
    # folders of small images
    root = os.fspath(folder)
    names: list[str] = []
    for dirpath, _, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        names += [
            prefix + name
            for name in filenames
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        ]
    if not names:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    names.sort()
    return InputList([InputItem(n, folder / n) for n in names], "file", "folder", folder)


def csv_image_dir(csv_path: Path, image_dir: str | os.PathLike | None) -> Path:
    """Where a CSV's image names point: ``image_dir``, else the folder named like the CSV
    beside it (``test.csv`` -> ``test/``, the Kaggle-style layout), else the CSV's folder."""
    if image_dir:
        return Path(image_dir)
    beside = csv_path.with_suffix("")
    return beside if beside.is_dir() else csv_path.parent


def list_csv(
    csv_path: Path,
    image_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    extension: str | None = None,
) -> InputList:
    """Every data row of a CSV of image names, in file order (one output row per CSV row).

    Columns and files are resolved exactly as the CSV datamodule does (column detection,
    extension or lookup by stem, no escaping the image directory). A row that names no usable
    file keeps its place with the reason, so the output stays aligned with the input.

    Raises:
        DataError: unreadable CSV, no rows, no image column, or none of the files exists.
    """
    from imgcls.data.csv_datamodule import (
        IMAGE_COLUMN_NAMES,
        LABEL_COLUMN_NAMES,
        DirectoryIndex,
        pick_column,
        read_csv_table,
        resolve_cell,
    )

    table = read_csv_table(csv_path, "input CSV")
    col, how = pick_column(table, image_column, IMAGE_COLUMN_NAMES, "image_column", "image")
    assert col is not None
    label_col, _ = pick_column(
        table, None, LABEL_COLUMN_NAMES, "label_column", "label", required=False, exclude=col
    )
    directory = csv_image_dir(csv_path, image_dir)
    if not directory.is_dir():
        raise DataError(f"image directory {directory} of {csv_path} does not exist (image_dir)")
    if extension and not str(extension).startswith("."):
        extension = f".{extension}"
    log.info(
        "%s: %d rows, image column %r (%s), images in %s",
        csv_path,
        len(table.rows),
        col,
        how,
        directory,
    )
    i_col = table.columns.index(col)
    i_lab = table.columns.index(label_col) if label_col is not None else None
    index = DirectoryIndex()
    items: list[InputItem] = []
    labels: list[str] = []
    for row, line, cells in table.rows:
        where = f"{csv_path.name} row {row} (line {line}), column {col!r}"
        cell = cells[i_col].strip() if i_col < len(cells) else ""
        path, error = directory, ""
        if not cell:
            error = f"empty image name ({where})"
        else:
            try:
                path = resolve_cell(cell, directory, extension or None, index, where)
            except DataError as e:
                error = str(e)
            if not error and not index.exists(path):
                error = f"image file not found: {path} ({where}){index.hint(path)}"
        items.append(InputItem(cell, path, where, error))
        if i_lab is not None:
            labels.append(cells[i_lab].strip() if i_lab < len(cells) else "")
    if all(it.error for it in items):
        raise DataError(
            f"none of the {len(items)} images listed in {csv_path} can be read from {directory} "
            f"(first: {items[0].error}); set image_dir (and extension) to where the files are"
        )
    return InputList(items, col, "csv", csv_path, label_col, labels if label_col else None)


def list_inputs(
    source: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    extension: str | None = None,
) -> InputList:
    """Resolve ``input=``: one image file, a folder of images, or a CSV of image names.

    Raises:
        DataError: the input does not exist or holds no image.
    """
    path = Path(source)
    if path.is_dir():
        return list_folder(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return list_csv(path, image_dir, image_column, extension)
    if path.is_file():
        return InputList([InputItem(str(source), path)], "file", "file", path)
    raise DataError(f"input not found: {path}")


# -- decoding per batch ------------------------------------------------------------------------
class ImageFiles(Dataset):
    """Decodes listed files a batch at a time; unreadable files become errors, not exceptions.

    ``__getitems__`` returns ``(uint8 images, positions, errors)``: a failed file leaves a zero
    image in its slot (batch shapes stay fixed) and its message in ``errors``.
    """

    def __init__(self, items: Sequence[InputItem], spec: DataSpec) -> None:
        self.items = list(items)
        self.channels = spec.in_channels
        self.size = spec.image_size
        self.eval_transform = spec.eval_transform  # streamed checkpoints: resize + center crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, list[str]]:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, list[str]]:
        images = torch.zeros(len(indices), self.channels, *self.size, dtype=torch.uint8)
        errors: list[str] = []
        for slot, i in enumerate(indices):
            item = self.items[i]
            if item.error:
                errors.append(item.error)
                continue
            try:
                if self.eval_transform:
                    images[slot] = load_for_eval(
                        item.path, self.channels, self.eval_transform, item.where
                    )
                    errors.append("")
                    continue
                images[slot] = load_image(
                    item.path, channels=self.channels, size=self.size, where=item.where
                )
                errors.append("")
            except DataError as e:
                errors.append(str(e))
        return images, torch.as_tensor(list(indices), dtype=torch.long), errors


class PredictInputs(L.LightningDataModule):
    """Feeds ``ImageFiles`` to ``Trainer.predict``; normalizes on the device like evaluation."""

    def __init__(
        self, items: Sequence[InputItem], spec: DataSpec, batch_size: int, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.dataset = ImageFiles(items, spec)
        self.spec = spec
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)

    def predict_dataloader(self) -> DataLoader:
        return batch_loader(
            self.dataset, self.batch_size, shuffle=False, num_workers=self.num_workers
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, positions, errors = batch
        return normalize(images, self.spec.mean, self.spec.std), positions, errors


class TopKCollector(BasePredictionWriter):
    """Keeps the top-k classes and probabilities of every batch (on the host, k per image).

    Args:
        k: classes kept per image.
        stop_on_error: raise the first unreadable file's ``DataError`` instead of recording it.
    """

    def __init__(self, k: int, stop_on_error: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.k = int(k)
        self.stop_on_error = bool(stop_on_error)
        self.positions: list[Tensor] = []
        self.probs: list[Tensor] = []
        self.indices: list[Tensor] = []
        self.errors: dict[int, str] = {}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        _, positions, errors = batch
        positions = positions.cpu()
        for pos, err in zip(positions.tolist(), errors, strict=True):
            if err:
                if self.stop_on_error:
                    raise DataError(
                        f"{err} (on_error=skip predicts the other images and lists this one)"
                    )
                self.errors[pos] = err
        top_p, top_i = prediction.float().topk(self.k, dim=1)
        self.positions.append(positions)
        self.probs.append(top_p.cpu())
        self.indices.append(top_i.cpu())

    def table(self, inputs: InputList, class_names: Sequence[str]) -> pd.DataFrame:
        """One row per input in input order: id, pred, prob, top1..topk (+ _prob), error."""
        n = len(inputs.items)
        order = torch.cat(self.positions) if self.positions else torch.empty(0, dtype=torch.long)
        probs = torch.zeros(n, self.k)
        idx = torch.zeros(n, self.k, dtype=torch.long)
        probs[order] = torch.cat(self.probs) if self.probs else probs[:0]
        idx[order] = torch.cat(self.indices) if self.indices else idx[:0]
        ok = torch.ones(n, dtype=torch.bool)
        ok[list(self.errors)] = False
        names = list(class_names)
        cols: dict[str, list[Any]] = {inputs.id_column: [it.id for it in inputs.items]}

        def named(j: int) -> list[Any]:
            return [
                names[i] if good else ""
                for i, good in zip(idx[:, j].tolist(), ok.tolist(), strict=True)
            ]

        def prob(j: int) -> list[Any]:
            return [
                p if good else None
                for p, good in zip(probs[:, j].tolist(), ok.tolist(), strict=True)
            ]

        cols["pred"], cols["prob"] = named(0), prob(0)
        for j in range(self.k):
            cols[f"top{j + 1}"], cols[f"top{j + 1}_prob"] = named(j), prob(j)
        cols["error"] = [self.errors.get(i, "") for i in range(n)]
        return pd.DataFrame(cols)


# -- the task ----------------------------------------------------------------------------------
def resolve_top_k(top_k: int | None, num_classes: int) -> int:
    """``top_k`` or min(5, classes); more than the model has is clamped with a warning."""
    if top_k is None:
        return min(5, num_classes)
    if int(top_k) < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1")
    if int(top_k) > num_classes:
        log.warning(
            "top_k=%s but the model has %d classes: writing all %d", top_k, num_classes, num_classes
        )
        return num_classes
    return int(top_k)


def predict(cfg: DictConfig) -> dict[str, float]:
    """Predict every input image; writes ``predictions.csv`` (and ``submission.csv`` for a CSV)."""
    apply_extras(cfg)
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
    model = use_tta(load_classifier(cfg.ckpt_path), cfg)
    spec: DataSpec = model.spec
    k = resolve_top_k(cfg.get("top_k"), spec.num_classes)
    inputs = list_inputs(
        cfg.input, cfg.get("image_dir"), cfg.get("image_column"), cfg.get("extension")
    )
    if on_error == "stop":  # missing files are cheap to find before any inference
        for item in inputs.items:
            if item.error:
                raise DataError(f"{item.error} (on_error=skip predicts the others and lists it)")
    log.info(
        "predicting %d image(s) from %s with %s (%d classes, top %d)",
        len(inputs.items),
        inputs.source,
        cfg.ckpt_path,
        spec.num_classes,
        k,
    )

    collector = TopKCollector(k, stop_on_error=on_error == "stop")
    trainer, _, _ = build_trainer(cfg)
    if trainer.world_size > 1:
        raise ConfigError(
            "predict writes rows in input order from one process: use trainer.devices=1"
        )
    trainer.callbacks.append(collector)  # type: ignore[attr-defined]
    dm = PredictInputs(inputs.items, spec, cfg.get("batch_size", 256), cfg.get("num_workers", 0))
    trainer.predict(model, datamodule=dm, return_predictions=False)

    table = collector.table(inputs, spec.class_names)
    if inputs.labels is not None:  # a labeled CSV: its labels beside the predictions
        table.insert(1, str(inputs.label_column), inputs.labels)
    out = Path(cfg.get("predictions_file") or Path(cfg.paths.output_dir) / "predictions.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.7g")
    failed = {i: msg for i, msg in sorted(collector.errors.items())}
    log.info(
        "%s: %d row(s), %d predicted, %d failed%s",
        out,
        len(table),
        len(table) - len(failed),
        len(failed),
        " (rows with an 'error')" if failed else "",
    )
    log.info("results:\n%s", results_table(table, inputs.id_column))
    if failed:
        log.warning("%d image(s) could not be read:", len(failed))
        for i, msg in list(failed.items())[:20]:
            log.warning("  %s: %s", inputs.items[i].id or inputs.items[i].where, msg)
    metrics = {
        "predict/images": float(len(table) - len(failed)),
        "predict/failed": float(len(failed)),
        "predict/tta_flip": float(model.tta == "flip"),
    }
    if inputs.kind == "csv" and cfg.get("submission", True):
        if failed:
            raise DataError(missing_rows_message(inputs, failed, out))
        write_submission(cfg, inputs, table)
    if inputs.labels is not None:  # a labeled CSV: score it (unreadable rows count as wrong)
        correct = sum(p == t for p, t in zip(table["pred"], inputs.labels, strict=True))
        metrics["predict/acc"] = correct / len(table)
        log.info("accuracy against the CSV's labels: %.4f", metrics["predict/acc"])
    return metrics


CONSOLE_ROWS = 20


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
    """One error for a submission with rows that have no prediction."""
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


__all__ = ["predict", "list_inputs", "InputItem", "InputList", "ImageFiles", "TopKCollector"]
