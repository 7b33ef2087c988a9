"""Images listed in a CSV: an image column (file name or id) and a label column.

Handles the layouts met in the wild, e.g. ``id,label`` with ``train/<id>.png`` plus a label-less
``test.csv`` to predict, and ``Image_Name,Lable`` with ``<Image_Name>.JPG`` files. Columns are
detected when not configured; the file extension is configured or found by the file's stem.

``read_image_csv`` is usable on its own (predict inputs) and reports problems by CSV row,
line and column.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.data.file_source import FileImageDataModule, ImageEntry, Problems
from imgcls.data.images import IMAGE_EXTENSIONS, resolve_under
from imgcls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Names seen in public datasets and tutorials, compared after lower-casing and mapping
# spaces/dashes to underscores. "lable" is a real misspelling from the seed tutorial.
IMAGE_COLUMN_NAMES = (
    "id",
    "image",
    "image_name",
    "image_id",
    "img",
    "img_name",
    "filename",
    "file_name",
    "file",
    "path",
    "image_path",
    "filepath",
    "file_path",
    "name",
    "fname",
)
LABEL_COLUMN_NAMES = (
    "label",
    "lable",
    "labels",
    "class",
    "class_name",
    "category",
    "target",
    "y",
    "species",
)


@dataclass
class CsvTable:
    """A parsed CSV: header and data rows with their 1-based row and line numbers."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, int, list[str]]]  # (data row, line in the file, cells)


def read_csv_table(path: str | os.PathLike, what: str = "CSV") -> CsvTable:
    """Read a CSV with a header line; blank lines are skipped.

    Raises:
        DataError: missing file, empty file, no data rows, malformed CSV, not UTF-8 text.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found: {p}")
    header: list[str] | None = None
    rows: list[tuple[int, int, list[str]]] = []
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            try:
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue
                    if header is None:
                        header = [c.strip() for c in cells]
                    else:
                        rows.append((len(rows) + 1, reader.line_num, cells))
            except csv.Error as e:
                raise DataError(f"{p} line {reader.line_num}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not a UTF-8 text CSV ({e})") from None
    if header is None:
        raise DataError(
            f"{p} is empty: expected a header line such as 'id,label' and one row per image"
        )
    if not rows:
        raise DataError(f"{p} has a header ({','.join(header)}) but no data rows")
    return CsvTable(p, header, rows)


def _norm(column: str) -> str:
    return column.strip().lower().replace(" ", "_").replace("-", "_")


def pick_column(
    table: CsvTable,
    configured: str | None,
    candidates: tuple[str, ...],
    option: str,
    role: str,
    required: bool = True,
    exclude: str | None = None,
) -> tuple[str | None, str]:
    """The column to use and how it was chosen (``"configured"``/``"detected"``/...).

    Raises:
        DataError: the configured column is absent, or none is found and ``required``; the
            message lists the columns the CSV has.
    """
    cols = table.columns
    if configured:
        if configured in cols:
            return configured, "configured"
        raise DataError(
            f"{table.path} has no column {configured!r} ({option}); its columns are: {', '.join(cols)}"
        )
    by_norm: dict[str, str] = {}
    for c in cols:
        by_norm.setdefault(_norm(c), c)
    for cand in candidates:
        if cand in by_norm and by_norm[cand] != exclude:
            return by_norm[cand], "detected"
    if required and exclude is not None and len(cols) == 2 and exclude in cols:
        return next(c for c in cols if c != exclude), "the other of two columns"
    if not required:
        return None, "absent"
    raise DataError(
        f"{table.path}: no {role} column found (looked for {', '.join(candidates)}); its columns are: "
        f"{', '.join(cols)}; set {option}=<column name>"
    )


class DirectoryIndex:
    """Directory listings (file names by stem), read once per directory.

    Resolves CSV cells without an extension (``12`` -> ``12.png``) and explains missing files
    (``12.jpg`` listed, ``12.JPG`` on disk) without a stat call per guess. Plain strings and
    ``os.path``: ``pathlib`` parsing dominated the listing of large CSVs.
    """

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[set[str], dict[str, list[str]]]] = {}

    def _listing(self, directory: str) -> tuple[set[str], dict[str, list[str]]]:
        if directory not in self._dirs:
            names: set[str] = set()
            stems: dict[str, list[str]] = {}
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        names.add(entry.name)
                        stems.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)
            except OSError:
                pass
            self._dirs[directory] = (names, stems)
        return self._dirs[directory]

    def exists(self, path: str | os.PathLike) -> bool:
        directory, name = os.path.split(os.fspath(path))
        return name in self._listing(directory)[0]

    def by_stem(self, path: str | os.PathLike) -> list[str]:
        """Image files in ``path``'s directory whose name is ``path``'s name plus an image extension."""
        directory, name = os.path.split(os.fspath(path))
        names = self._listing(directory)[1].get(name, [])
        return sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)

    def hint(self, path: str | os.PathLike) -> str:
        """Why ``path`` may be missing: similar names on disk, or a missing directory."""
        directory, name = os.path.split(os.fspath(path))
        if not os.path.isdir(directory):
            return f" (the directory {directory} does not exist)"
        stems = self._listing(directory)[1]
        stem = os.path.splitext(name)[0]
        similar = sorted({*stems.get(stem, []), *stems.get(name, [])} - {name})[:3]
        if similar:
            return (
                f" (found {', '.join(similar)} in the same directory; file names and extensions are "
                f"case-sensitive: set data.extension to the one on disk, or null to find files by stem)"
            )
        if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
            return f" (nor any {name}.<image extension>)"
        return ""


def resolve_cell(
    cell: str, image_dir: Path, extension: str | None, index: DirectoryIndex, where: str = ""
) -> Path:
    """The file a CSV cell names.

    With ``extension`` set, it is appended (unless the cell already ends with it). Without,
    the cell is taken as a file name when such a file exists, else as a stem whose single
    image file (any extension) is used.

    Raises:
        DataError: the path escapes ``image_dir`` or the stem matches several image files.
    """
    name = cell + extension if extension and not cell.endswith(extension) else cell
    path = resolve_under(image_dir, name, where)
    if extension or index.exists(path):
        return path
    matches = index.by_stem(path)
    if len(matches) == 1:
        return path.with_name(matches[0])
    if len(matches) > 1:
        raise DataError(
            f"{cell!r} matches several image files in {os.path.dirname(path)}: {', '.join(matches)}; "
            f"set data.extension to choose one"
        )
    return path  # missing: reported with a hint when the files are checked


@dataclass
class CsvListing:
    """Entries read from one CSV and the columns used."""

    csv_path: Path
    entries: list[ImageEntry]
    image_column: str
    label_column: str | None


def read_image_csv(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    image_column: str | None = None,
    label_column: str | None = None,
    extension: str | None = None,
    labels: str = "required",
    problems: Problems | None = None,
    index: DirectoryIndex | None = None,
    what: str = "CSV",
) -> CsvListing:
    """List the images (and labels) of a CSV.

    Args:
        csv_path: the CSV file.
        image_dir: directory the image cells are relative to.
        image_column: column of file names/ids; ``None`` detects a common name.
        label_column: label column; ``None`` detects a common name.
        extension: appended to each image cell (e.g. ``.png``, ``.JPG``); ``None`` resolves
            by the file's stem.
        labels: ``"required"`` (train/val), ``"optional"`` (a test CSV may lack labels) or
            ``"ignore"`` (predict inputs).
        problems: collects per-row problems (rows left out); ``None`` raises them at the end.
        index: directory listings shared between CSVs.
        what: the CSV's role for messages (e.g. ``"data.train_csv"``).

    Raises:
        DataError: structural problems (see ``read_csv_table``, ``pick_column``); per-row
            problems too when ``problems`` is ``None``.
    """
    table = read_csv_table(csv_path, what)
    own_problems = problems is None
    problems = Problems() if problems is None else problems
    index = index or DirectoryIndex()
    img_col, img_how = pick_column(
        table, image_column, IMAGE_COLUMN_NAMES, "data.image_column", "image"
    )
    assert img_col is not None
    lab_col: str | None = None
    lab_how = "not used"
    if labels != "ignore":
        lab_col, lab_how = pick_column(
            table,
            label_column,
            LABEL_COLUMN_NAMES,
            "data.label_column",
            "label",
            required=labels == "required",
            exclude=img_col,
        )
    if lab_col == img_col:
        raise ConfigError(f"{table.path}: the image and label columns are both {img_col!r}")
    log.info(
        "%s %s: %d rows; image column %r (%s), label column %r (%s)",
        what,
        table.path,
        len(table.rows),
        img_col,
        img_how,
        lab_col,
        lab_how,
    )
    i_img = table.columns.index(img_col)
    i_lab = table.columns.index(lab_col) if lab_col is not None else None
    directory = Path(image_dir)
    entries: list[ImageEntry] = []
    for row, line, cells in table.rows:
        at = f"{table.path.name} row {row} (line {line})"
        where = f"{at}, column {img_col!r}"
        cell = cells[i_img].strip() if i_img < len(cells) else ""
        if not cell:
            problems.add(where, "empty image name")
            continue
        try:
            path = resolve_cell(cell, directory, extension, index)  # problems add the row
        except DataError as e:
            problems.add(where, str(e))
            continue
        label = None
        if i_lab is not None:
            label = cells[i_lab].strip() if i_lab < len(cells) else ""
            if not label:
                problems.add(f"{at}, column {lab_col!r}", f"empty label cell (image {cell!r})")
                continue
        entries.append(ImageEntry(path=path, label=label, name=cell, where=where))
    if own_problems:
        problems.raise_if_any(str(table.path))
    return CsvListing(table.path, entries, img_col, lab_col)


class CSVDataModule(FileImageDataModule):
    """Images listed in CSV files, decoded once into memory (see ``FileImageDataModule``).

    Paths are relative to ``root`` unless absolute.

    Args:
        root: dataset directory.
        train_csv: CSV of training images and labels.
        image_dir: directory the training CSV's image cells are relative to.
        val_csv: optional CSV of validation images; without it ``val_fraction`` of each class
            is held out (stratified, seeded).
        val_image_dir: image directory of ``val_csv`` (default ``image_dir``).
        test_csv: optional CSV; with labels it is the test split, without (e.g. ``id`` only)
            its images form the ``predict`` split, named by ``predict_names``.
        test_image_dir: image directory of ``test_csv`` (default ``image_dir``).
        image_column: column of file names/ids (``None``: detect ``id``, ``Image_Name``, ...).
        label_column: label column (``None``: detect ``label``, ``Lable``, ``class``, ...).
        extension: appended to each image cell, e.g. ``.png`` or ``.JPG`` (case matters);
            ``None`` uses the cell as a file name or finds the one image file with that stem.
        **kwargs: channels, size, split, cache and loader options (``FileImageDataModule``).
    """

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
        self.root = Path(root)
        self.train_csv = self.root / train_csv
        self.image_dir = self.root / image_dir
        self.val_csv = self.root / val_csv if val_csv else None
        self.val_image_dir = self.root / val_image_dir if val_image_dir else self.image_dir
        self.test_csv = self.root / test_csv if test_csv else None
        self.test_image_dir = self.root / test_image_dir if test_image_dir else self.image_dir
        self.image_column = image_column or None
        self.label_column = label_column or None
        if extension and not str(extension).startswith("."):
            extension = f".{extension}"
        self.extension = extension or None
        self._index = DirectoryIndex()

    def describe(self) -> str:
        return f"CSV dataset {self.train_csv}"

    def missing_hint(self, path: Path) -> str:
        return self._index.hint(path)

    def _read(
        self, csv_path: Path, image_dir: Path, labels: str, problems: Problems, what: str
    ) -> CsvListing:
        if not image_dir.is_dir():
            raise DataError(f"image directory {image_dir} of {csv_path} does not exist ({what})")
        return read_image_csv(
            csv_path,
            image_dir,
            self.image_column,
            self.label_column,
            self.extension,
            labels=labels,
            problems=problems,
            index=self._index,
            what=what,
        )

    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        if not self.train_csv.is_file():
            raise DataError(
                f"training CSV not found: {self.train_csv} (data.root={self.root}, data.train_csv). "
                f"To try the template on digits: python scripts/make_digit_datasets.py"
            )
        out = {
            "train": self._read(
                self.train_csv, self.image_dir, "required", problems, "data.train_csv"
            ).entries
        }
        if self.val_csv is not None:
            out["val"] = self._read(
                self.val_csv, self.val_image_dir, "required", problems, "data.val_csv"
            ).entries
        if self.test_csv is not None:
            if not self.test_csv.is_file():
                raise DataError(
                    f"test CSV not found: {self.test_csv} (data.test_csv; set it to null if there is none)"
                )
            test = self._read(
                self.test_csv, self.test_image_dir, "optional", problems, "data.test_csv"
            )
            split = "test" if test.label_column is not None else "predict"
            out[split] = test.entries
            if split == "predict":
                log.info(
                    "%s has no label column: its %d images form the predict split",
                    self.test_csv,
                    len(test.entries),
                )
        return out
