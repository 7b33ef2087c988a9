"""What ``predict`` reads: one image, a folder of images or a CSV of image names, decoded per batch.

An unreadable file never stops the others: it gets a zero placeholder in its batch and its message
travels with the batch (``predict`` decides whether that stops the run)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from imgcls.data.csv_table import DirectoryIndex, read_image_rows
from imgcls.data.images import IMAGE_EXTENSIONS, load_image
from imgcls.data.roots import DataRoot
from imgcls.data.spec import DataSpec
from imgcls.data.tensor_dataset import batch_loader
from imgcls.data.transforms import normalize
from imgcls.engine.streaming.loader import load_for_eval
from imgcls.errors import DataError


@dataclass(frozen=True)
class InputItem:
    id: str  # its output row's key: path relative to the input folder, or the CSV cell
    path: Path
    where: str = ""  # e.g. "test.csv row 7 (line 8), column 'id'"
    error: str = ""  # known before decoding (e.g. an empty CSV cell): reported, not decoded


@dataclass
class InputList:
    items: list[InputItem]
    id_column: str
    kind: str  # "file" | "folder" | "csv"
    source: Path
    label_column: str | None = None  # a CSV's label column, when it has one (for scoring)
    labels: list[str] | None = None


def list_folder(folder: Path, allow_outside_root: bool = False) -> InputList:
    """Every image file under ``folder`` (recursively), sorted by relative path; a symlink out
    of the folder or a loop keeps a row with the reason (``imgcls.data.roots``)."""
    refused: list[tuple[str, str]] = []
    files = DataRoot(folder, allow_outside_root).images(folder, IMAGE_EXTENSIONS, refused)
    found = [(p, "") for p in files] + [(Path(p), why) for p, why in refused]
    if not found:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    rel = [(os.path.relpath(p, folder).replace(os.sep, "/"), p, why) for p, why in found]
    items = [InputItem(name, p, error=why) for name, p, why in sorted(rel)]
    return InputList(items, "file", "folder", folder)


def list_csv(
    csv_path: Path,
    image_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    extension: str | None = None,
    allow_outside_root: bool = False,
) -> InputList:
    """One item per CSV row, in file order, resolved as the CSV datamodule does; a row naming no
    usable file keeps its place with the reason, so the output stays aligned. Images are in
    ``image_dir``, else the folder named like the CSV beside it (``test.csv`` -> ``test/``,
    Kaggle-style), else the CSV's folder."""
    beside = csv_path.with_suffix("")
    directory = Path(image_dir or (beside if beside.is_dir() else csv_path.parent))
    index, root = DirectoryIndex(), DataRoot(csv_path.parent, allow_outside_root)
    root.named(directory)  # images may lie only where the CSV is (or where image_dir says)
    listing = read_image_rows(
        csv_path, directory, image_column, None, extension, "optional", index, "input CSV", "", root
    )
    items = []
    for r in listing.rows:
        error = f"{r.error} ({r.where})" if r.error else ""
        if not error and not index.exists(r.path):
            error = f"image file not found: {r.path} ({r.where}){index.hint(r.path)}"
        items.append(InputItem(r.name, r.path, r.where, error))
    if all(it.error for it in items):
        raise DataError(
            f"none of the {len(items)} images listed in {csv_path} can be read from {directory} "
            f"(first: {items[0].error}); set image_dir (and extension) to where the files are"
        )
    labels = [str(r.label) for r in listing.rows] if listing.label_column else None
    return InputList(items, listing.image_column, "csv", csv_path, listing.label_column, labels)


def list_inputs(source: str | os.PathLike, **csv_options: Any) -> InputList:
    """Resolve ``input=``: one image file, a folder of images, or a CSV of image names
    (``csv_options``: those of ``list_csv``)."""
    path = Path(source)
    if path.is_dir():
        return list_folder(path, bool(csv_options.get("allow_outside_root")))
    if path.is_file() and path.suffix.lower() == ".csv":
        return list_csv(path, **csv_options)
    if path.is_file():
        return InputList([InputItem(str(source), path)], "file", "file", path)
    raise DataError(f"input not found: {path}")


class ImageFiles(Dataset):
    """``__getitems__`` -> ``(uint8 images, positions, errors)``: a failed file leaves a zero
    image in its slot (batch shapes stay fixed) and its message in ``errors``."""

    def __init__(self, items: Sequence[InputItem], spec: DataSpec) -> None:
        self.items = list(items)
        self.channels, self.size = spec.in_channels, spec.image_size
        self.eval_transform = spec.eval_transform  # streamed checkpoints: resize + center crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, list[str]]:
        return self.__getitems__([index])

    def _load(self, item: InputItem) -> Tensor:
        if item.error:  # known from the listing: not decoded
            raise DataError(item.error)
        if self.eval_transform:
            return load_for_eval(item.path, self.channels, self.eval_transform, item.where)
        return load_image(item.path, channels=self.channels, size=self.size, where=item.where)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, list[str]]:
        images = torch.zeros(len(indices), self.channels, *self.size, dtype=torch.uint8)
        errors: list[str] = []
        for slot, i in enumerate(indices):
            try:
                images[slot] = self._load(self.items[i])
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
        self.dataset, self.spec = ImageFiles(items, spec), spec
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def predict_dataloader(self) -> DataLoader:
        return batch_loader(
            self.dataset, self.batch_size, shuffle=False, num_workers=self.num_workers
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, positions, errors = batch
        return normalize(images, self.spec.mean, self.spec.std), positions, errors
