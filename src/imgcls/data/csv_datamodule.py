"""Images listed in a CSV: an image column (file name or id) and a label column.

Handles layouts met in the wild, e.g. ``id,label`` with ``train/<id>.png`` plus a label-less
``test.csv`` to predict, and ``Image_Name,Lable`` with ``<Image_Name>.JPG`` files. Columns are
detected unless configured; the extension is configured or found by stem (``csv_table``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from imgcls.data.csv_table import CsvListing, DirectoryIndex, read_image_rows
from imgcls.data.file_source import FileImageDataModule, ImageEntry, Problems
from imgcls.data.roots import DataRoot
from imgcls.errors import DataError

log = logging.getLogger(__name__)


def read_image_csv(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    problems: Problems | None = None,
    **options: Any,
) -> CsvListing:
    """The usable rows of a CSV as entries; the others go to ``problems`` (raised at the end
    when ``None``). ``options``: those of ``imgcls.data.csv_table.read_image_rows``."""
    listing = read_image_rows(csv_path, image_dir, **options)
    found = Problems() if problems is None else problems
    for r in listing.rows:
        if r.error:
            found.add(r.where, r.error)
        elif r.label == "":
            found.add(r.label_where, f"empty label cell (image {r.name!r})")
        else:
            listing.entries.append(
                ImageEntry(path=r.path, label=r.label, name=r.name, where=r.where)
            )
    if problems is None:
        found.raise_if_any(str(listing.csv_path))
    return listing


class CSVDataModule(FileImageDataModule):
    """Images listed in CSV files, decoded once into memory (see ``FileImageDataModule``).

    Paths are relative to ``root`` unless absolute. Without ``val_csv``, ``val_fraction`` of each
    class is held out. A labeled ``test_csv`` is the test split, an ``id``-only one the ``predict``
    split. ``*_image_dir`` default to ``image_dir``. ``extension`` is appended to each image cell
    (case matters); ``None`` uses the cell as a file name or finds the one file with that stem.
    Files must lie in ``root`` after symlinks are resolved (``imgcls.data.roots``)."""

    source_name = "CSV dataset"

    def __init__(
        self,
        root: str = ".",
        train_csv: str = "train.csv",
        image_dir: str = ".",
        val_csv: str | None = None,
        val_image_dir: str | None = None,
        test_csv: str | None = None,
        test_image_dir: str | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        extension: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = base = Path(root)
        self.train_csv, self.image_dir = base / train_csv, base / image_dir
        self.val_csv = base / val_csv if val_csv else None
        self.val_image_dir = base / val_image_dir if val_image_dir else self.image_dir
        self.test_csv = base / test_csv if test_csv else None
        self.test_image_dir = base / test_image_dir if test_image_dir else self.image_dir
        cols = {"image_column": image_column, "label_column": label_column, "extension": extension}
        self.columns = {k: v or None for k, v in cols.items()}
        self._index = DirectoryIndex()

    def describe(self) -> str:
        return f"CSV dataset {self.train_csv}"

    def missing_hint(self, path: Path) -> str:
        return self._index.hint(path)

    def _read(self, option: str, image_dir: Path, labels: str, problems: Problems) -> CsvListing:
        csv, what = getattr(self, option), f"data.{option}"
        self._data_root.named(csv)
        self._data_root.named(image_dir)
        opts = {**self.columns, "labels": labels, "index": self._index, "what": what}
        return read_image_csv(csv, image_dir, problems, root=self._data_root, **opts)

    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        if not self.train_csv.is_file():
            raise DataError(
                f"training CSV not found: {self.train_csv} (data.root={self.root}, data.train_csv). "
                f"To try the template on digits: python scripts/make_digit_datasets.py"
            )
        self._data_root = DataRoot(self.root, self.allow_outside_root)
        out = {"train": self._read("train_csv", self.image_dir, "required", problems).entries}
        if self.val_csv is not None:
            out["val"] = self._read("val_csv", self.val_image_dir, "required", problems).entries
        if self.test_csv is not None:
            if not self.test_csv.is_file():
                raise DataError(
                    f"test CSV not found: {self.test_csv} (data.test_csv; set it to null if there is none)"
                )
            test = self._read("test_csv", self.test_image_dir, "optional", problems)
            split = "test" if test.label_column is not None else "predict"
            out[split] = test.entries
            if split == "predict":
                log.info(
                    "%s has no label column: its %d images form the predict split",
                    *(self.test_csv, len(test.entries)),
                )
        return out
