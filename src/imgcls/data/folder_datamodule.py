"""Class folders: ``<root>/train/<class>/<image>``, ``<root>/valid/<class>/...`` (or ``val/``), optional ``test/``.

The layout of ``torchvision.datasets.ImageFolder`` (same classes, files and order), listed by
``roots.DataRoot`` rather than ``make_dataset``: that follows every symlink, loops and all, and
reads outside the root. Decoded once into memory like every file source."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from imgcls.data.file_source import FileImageDataModule, ImageEntry, Problems
from imgcls.data.images import IMAGE_EXTENSIONS
from imgcls.data.roots import DataRoot
from imgcls.errors import DataError

log = logging.getLogger(__name__)

VAL_DIR_NAMES = ("valid", "val", "validation")


def _class_dirs(directory: Path) -> list[str]:
    with os.scandir(directory) as it:
        return sorted(
            e.name for e in it if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
        )


def _loose_images(directory: Path) -> list[str]:
    with os.scandir(directory) as it:
        return sorted(
            e.name for e in it if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
        )


class FolderDataModule(FileImageDataModule):
    """An image-folder dataset decoded once into memory (see ``FileImageDataModule``).

    ``val_dir``/``test_dir`` ``None`` use ``valid/``, ``val/``, ``validation/`` / ``test/`` when
    present; without a validation folder ``val_fraction`` of each class is held out. A test
    folder with class sub-folders is a labeled test split, with loose images the ``predict``
    split. ``missing_hint`` is appended to the error when the dataset is absent."""

    source_name = "folder dataset"

    def __init__(
        self,
        root: str = ".",
        train_dir: str = "train",
        val_dir: str | None = None,
        test_dir: str | None = None,
        name: str = "folder dataset",
        missing_hint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir or None, test_dir or None
        self.name = name or "folder dataset"
        self.missing_hint_text = missing_hint or ""

    def describe(self) -> str:
        return f"{self.name} {self.root}"

    def _layout(self) -> str:
        r = self.root
        return (
            f"expected {r}/{self.train_dir}/<class>/<image> and {r}/valid/<class>/<image> "
            f"(val/ also accepted; test/ optional; images {', '.join(IMAGE_EXTENSIONS[:4])}, ...)"
        )

    def _absent(self, what: str) -> DataError:
        hint = f". {self.missing_hint_text}" if self.missing_hint_text else ""
        return DataError(f"{self.name} not found: {what}; {self._layout()}{hint}")

    def _list(self, directory: Path, split: str, problems: Problems) -> list[ImageEntry]:
        classes = _class_dirs(directory)
        entries: list[ImageEntry] = []
        refused: list[tuple[str, str]] = []
        for c in classes:
            for path in self._data_root.images(directory / c, IMAGE_EXTENSIONS, refused):
                rel = os.path.relpath(path, directory)
                entries.append(ImageEntry(path, c, rel, f"{directory.name}/{rel}"))
        refused_in = set()  # a refused class folder is not also reported as empty
        for link, message in refused:
            rel = os.path.relpath(link, directory)
            problems.add(f"{directory.name}/{rel}", message)
            refused_in.add(rel.split(os.sep)[0])
        if split == "train":
            for c in sorted(set(classes) - {e.label for e in entries} - refused_in):
                problems.add(f"{directory.name}/{c}", f"class folder {directory / c} has no images")
        return entries

    def _labeled(
        self, directory: Path, split: str, train: Path, problems: Problems
    ) -> tuple[list[ImageEntry], bool]:
        """A val/test folder's images of training classes, and whether it has unknown classes."""
        known = set(_class_dirs(train))
        unknown = sorted(set(_class_dirs(directory)) - known)
        for c in unknown:
            problems.add(
                f"{directory.name}/{c}", f"class {c!r} of {directory} has no folder in {train}"
            )
        return [e for e in self._list(directory, split, problems) if e.label in known], bool(
            unknown
        )

    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        if not self.root.is_dir():
            raise self._absent(f"{self.root} does not exist")
        train = self.root / self.train_dir
        if not train.is_dir():
            raise self._absent(f"no {self.train_dir}/ folder in {self.root}")
        self._data_root = DataRoot(self.root, self.allow_outside_root)
        self._data_root.named(train)
        if not _class_dirs(train):
            raise self._absent(f"{train} has no class folders")
        out = {"train": self._list(train, "train", problems)}
        if not out["train"]:
            raise DataError(f"{self.name} {train} has no images: {self._layout()}")
        val_dir = self._pick(self.val_dir, VAL_DIR_NAMES, "data.val_dir")
        if val_dir is not None:
            out["val"], unknown = self._labeled(val_dir, "val", train, problems)
            if not out["val"] and not unknown:
                raise DataError(
                    f"{self.name}: validation folder {val_dir} has no images; {self._layout()}"
                )
            log.info("validation: %s", val_dir)
        test_dir = self._pick(self.test_dir, ("test",), "data.test_dir")
        if test_dir is not None and _class_dirs(test_dir):
            out["test"] = self._labeled(test_dir, "test", train, problems)[0]
        elif test_dir is not None:
            out["predict"] = []
            for n in _loose_images(test_dir):
                entry = ImageEntry(test_dir / n, None, n, f"{test_dir.name}/{n}")
                try:
                    self._data_root.admit(entry.path)
                    out["predict"].append(entry)
                except DataError as e:
                    problems.add(entry.where, str(e))
            log.info(
                "%s holds unlabeled images: %d form the predict split",
                *(test_dir, len(out["predict"])),
            )
        return out

    def _pick(self, configured: str | None, defaults: tuple[str, ...], option: str) -> Path | None:
        if configured:
            d = self.root / configured
            if not d.is_dir():
                raise DataError(
                    f"{option}={configured!r}: {d} is not a directory; {self._layout()}"
                )
        else:
            found = next((d for d in (self.root / n for n in defaults) if d.is_dir()), None)
            if found is None:
                return None
            d = found
        self._data_root.named(d)
        return d
