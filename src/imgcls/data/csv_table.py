"""The one reader of image CSVs (training and prediction): columns, cells, files.

Own row loop over ``csv.reader``, not ``pandas.read_csv``: every problem names the data row, file
line and column (``train.csv row 3 (line 4), column 'id'``), which a DataFrame no longer knows
once blank lines are skipped and quoted cells span lines."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.data.images import IMAGE_EXTENSIONS, resolve_under
from imgcls.data.roots import DataRoot
from imgcls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Compared after lower-casing and mapping spaces/dashes to underscores; "lable" is a real
# misspelling from the seed tutorial.
IMAGE_COLUMN_NAMES = (
    *("id", "image", "image_name", "image_id", "img", "img_name", "filename", "file_name"),
    *("file", "path", "image_path", "filepath", "file_path", "name", "fname"),
)
LABEL_COLUMN_NAMES = (
    *("label", "lable", "labels", "class", "class_name", "category", "target", "y", "species"),
)
# NUL and the other C0/C1 control characters: no file name or label has them (os.stat raises
# "embedded null byte" on a NUL)
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class CsvTable:  # not a DataFrame: rows keep their row and line numbers
    path: Path
    columns: list[str]
    rows: list[tuple[int, int, list[str]]]  # (data row, line in the file, cells), 1-based


def read_csv_table(path: str | os.PathLike, what: str = "CSV") -> CsvTable:
    """A CSV with a header line; blank lines are skipped."""
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


def pick_column(
    table: CsvTable,
    configured: str | None,
    candidates: tuple[str, ...],
    option: str,
    role: str,
    required: bool = True,
    exclude: str | None = None,
) -> tuple[str | None, str]:
    """The column to use and how it was chosen; errors list the columns the CSV has."""
    cols = table.columns
    if configured:
        if configured in cols:
            return configured, "configured"
        raise DataError(
            f"{table.path} has no column {configured!r} ({option}); its columns are: {', '.join(cols)}"
        )
    by_norm: dict[str, str] = {}
    for c in cols:
        by_norm.setdefault(c.strip().lower().replace(" ", "_").replace("-", "_"), c)
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
    """Directory listings by stem, read once per directory.

    Resolves cells without an extension and explains missing files (``12.jpg`` listed, ``12.JPG``
    on disk) without a stat per guess. Plain strings and ``os.path``: ``pathlib`` parsing
    dominated the listing of large CSVs."""

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[set[str], dict[str, list[str]]]] = {}

    def _listing(self, directory: str) -> tuple[set[str], dict[str, list[str]]]:
        if directory not in self._dirs:
            names: set[str] = set()
            stems: dict[str, list[str]] = {}
            with contextlib.suppress(OSError), os.scandir(directory) as it:
                for entry in it:
                    names.add(entry.name)
                    stems.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)
            self._dirs[directory] = (names, stems)
        return self._dirs[directory]

    def exists(self, path: str | os.PathLike) -> bool:
        directory, name = os.path.split(os.fspath(path))
        return name in self._listing(directory)[0]

    def by_stem(self, path: str | os.PathLike) -> list[str]:
        directory, name = os.path.split(os.fspath(path))
        names = self._listing(directory)[1].get(name, [])
        return sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)

    def hint(self, path: str | os.PathLike) -> str:
        """Why ``path`` may be missing: similar names on disk, or a missing directory."""
        directory, name = os.path.split(os.fspath(path))
        if not os.path.isdir(directory):
            return f" (the directory {directory} does not exist)"
        stems = self._listing(directory)[1]
        similar = sorted({*stems.get(os.path.splitext(name)[0], []), *stems.get(name, [])} - {name})
        if similar:
            return (
                f" (found {', '.join(similar[:3])} in the same directory; file names and extensions "
                f"are case-sensitive: set data.extension to the one on disk, or null to find files "
                f"by stem)"
            )
        if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
            return f" (nor any {name}.<image extension>)"
        return ""


def resolve_cell(
    cell: str,
    image_dir: Path,
    extension: str | None,
    index: DirectoryIndex,
    root: DataRoot | None = None,
) -> Path:
    """The file a cell names: ``extension`` appended, else the file itself or the one image
    file with that stem. A missing file is returned as is (the caller reports it with a hint).
    ``root``: refuse a file or folder whose real path lies outside it, before listing it."""
    name = cell + extension if extension and not cell.endswith(extension) else cell
    path = resolve_under(image_dir, name)
    if root is not None:
        root.admit(path)
    if extension or index.exists(path):
        return path
    matches = index.by_stem(path)
    if len(matches) > 1:
        raise DataError(
            f"{cell!r} matches several image files in {os.path.dirname(path)}: {', '.join(matches)}; "
            f"set data.extension to choose one"
        )
    if not matches:
        return path
    if root is not None:
        root.admit(path.with_name(matches[0]))
    return path.with_name(matches[0])


@dataclass(frozen=True)
class CsvRow:
    name: str  # the image cell as written
    path: Path
    where: str  # "<csv> row 3 (line 4), column 'id'"
    error: str = ""  # why the row names no usable file (without ``where``)
    label: str | None = None  # None: no label column
    label_where: str = ""


@dataclass
class CsvListing:
    csv_path: Path
    rows: list[CsvRow]
    image_column: str
    label_column: str | None
    entries: list[Any] = field(default_factory=list)  # training's usable rows (read_image_csv)


def read_image_rows(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    image_column: str | None = None,
    label_column: str | None = None,
    extension: str | None = None,
    labels: str = "required",
    index: DirectoryIndex | None = None,
    what: str = "CSV",
    option: str = "data.",
    root: DataRoot | None = None,
) -> CsvListing:
    """Every data row of an image CSV, in file order, with its file or the reason it has none.

    ``labels``: ``required`` (train/val) or ``optional`` (test, predict); ``option`` prefixes the
    option names in messages (``data.`` for training); ``root``: see ``resolve_cell``."""
    table = read_csv_table(csv_path, what)
    directory = Path(image_dir)
    if not directory.is_dir():
        raise DataError(f"image directory {directory} of {csv_path} does not exist ({what})")
    index = index or DirectoryIndex()
    img_col, img_how = pick_column(
        table, image_column, IMAGE_COLUMN_NAMES, f"{option}image_column", "image"
    )
    assert img_col is not None
    role = (LABEL_COLUMN_NAMES, f"{option}label_column", "label", labels == "required", img_col)
    lab_col, lab_how = pick_column(table, label_column, *role)
    if lab_col == img_col:
        raise ConfigError(f"{table.path}: the image and label columns are both {img_col!r}")
    log.info(
        "%s %s: %d rows; image column %r (%s), label column %r (%s); images in %s",
        *(what, table.path, len(table.rows), img_col, img_how, lab_col, lab_how, directory),
    )
    ext = f".{extension}" if extension and not str(extension).startswith(".") else extension or None
    i_img = table.columns.index(img_col)
    i_lab = None if lab_col is None else table.columns.index(lab_col)
    rows = []
    for row, line, cells in table.rows:
        at = f"{table.path.name} row {row} (line {line})"
        cell = cells[i_img].strip() if i_img < len(cells) else ""
        label = None if i_lab is None else (cells[i_lab].strip() if i_lab < len(cells) else "")
        where, label_where = f"{at}, column {img_col!r}", f"{at}, column {lab_col!r}"
        path, error = directory, "empty image name"
        bad = CONTROL_CHARACTER.search(cell) or CONTROL_CHARACTER.search(label or "")
        if bad:
            where = where if bad.string == cell else label_where
            error = f"invalid character {bad.group()!r} in {bad.string!r} (a control character)"
        elif cell:
            try:
                path, error = resolve_cell(cell, directory, ext, index, root), ""
            except DataError as e:
                error = str(e)
        rows.append(CsvRow(cell, path, where, error, label, label_where))
    return CsvListing(table.path, rows, img_col, lab_col)
