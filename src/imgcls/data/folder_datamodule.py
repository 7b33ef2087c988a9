"""Class folders: ``<root>/train/<class>/<image>``, ``<root>/valid/<class>/...`` (or ``val/``), optional ``test/``.

The layout of ``torchvision.datasets.ImageFolder``, listed with torchvision's own helpers and
decoded once into memory like every file source. Class names come from ``train/`` and are
sorted numerically when they are all integers (Flowers-102's ``1..102``), as text otherwise.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torchvision.datasets.folder import make_dataset

from imgcls.data.file_source import FileImageDataModule, ImageEntry, Problems
from imgcls.data.images import IMAGE_EXTENSIONS
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

    Args:
        root: dataset directory holding ``train/`` (and ``valid/`` or ``val/``, optional ``test/``).
        train_dir: training folder under ``root``.
        val_dir: validation folder; ``None`` uses ``valid/``, ``val/`` or ``validation/`` when
            present, else holds out ``val_fraction`` of each training class.
        test_dir: test folder; ``None`` uses ``test/`` when present. Class sub-folders make it
            a labeled test split; loose images directly inside make it the ``predict`` split.
        name: dataset name for messages.
        missing_hint: appended to the error when the dataset is absent (where to get it).
        **kwargs: channels, size, split, cache and loader options (``FileImageDataModule``).
    """

    source_name = "folder dataset"

    def __init__(
        self,
        root: str = ".",
        train_dir: str = "train",
        val_dir: str | None = None,
        test_dir: str | None = None,
        name: str | None = None,
        missing_hint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.train_dir = train_dir
        self.val_dir = val_dir or None
        self.test_dir = test_dir or None
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
        found = make_dataset(
            str(directory),
            {c: i for i, c in enumerate(classes)},
            extensions=IMAGE_EXTENSIONS,
            allow_empty=True,
        )
        counts = dict.fromkeys(classes, 0)
        entries = []
        for path, i in found:
            counts[classes[i]] += 1
            rel = os.path.relpath(path, directory)
            entries.append(
                ImageEntry(
                    path=Path(path), label=classes[i], name=rel, where=f"{directory.name}/{rel}"
                )
            )
        for c, n in counts.items():
            if n == 0 and split == "train":
                problems.add(f"{directory.name}/{c}", f"class folder {directory / c} has no images")
        return entries

    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        if not self.root.is_dir():
            raise self._absent(f"{self.root} does not exist")
        train = self.root / self.train_dir
        if not train.is_dir():
            raise self._absent(f"no {self.train_dir}/ folder in {self.root}")
        if not _class_dirs(train):
            raise self._absent(f"{train} has no class folders")
        out = {"train": self._list(train, "train", problems)}
        if not out["train"]:
            raise DataError(f"{self.name} {train} has no images: {self._layout()}")

        train_classes = set(_class_dirs(train))
        val_dir = self._pick(self.val_dir, VAL_DIR_NAMES, "data.val_dir")
        if val_dir is not None:
            missing = sorted(set(_class_dirs(val_dir)) - train_classes)
            for c in missing:
                problems.add(
                    f"{val_dir.name}/{c}", f"class {c!r} of {val_dir} has no folder in {train}"
                )
            out["val"] = [
                e for e in self._list(val_dir, "val", problems) if e.label in train_classes
            ]
            if not out["val"] and not missing:
                raise DataError(
                    f"{self.name}: validation folder {val_dir} has no images; {self._layout()}"
                )
            log.info("validation: %s", val_dir)
        test_dir = self._pick(self.test_dir, ("test",), "data.test_dir")
        if test_dir is not None:
            if _class_dirs(test_dir):
                missing = sorted(set(_class_dirs(test_dir)) - train_classes)
                for c in missing:
                    problems.add(
                        f"{test_dir.name}/{c}",
                        f"class {c!r} of {test_dir} has no folder in {train}",
                    )
                out["test"] = [
                    e for e in self._list(test_dir, "test", problems) if e.label in train_classes
                ]
            else:
                out["predict"] = [
                    ImageEntry(path=test_dir / n, label=None, name=n, where=f"{test_dir.name}/{n}")
                    for n in _loose_images(test_dir)
                ]
                log.info(
                    "%s holds unlabeled images: %d form the predict split",
                    test_dir,
                    len(out["predict"]),
                )
        return out

    def _pick(self, configured: str | None, defaults: tuple[str, ...], option: str) -> Path | None:
        if configured:
            d = self.root / configured
            if not d.is_dir():
                raise DataError(
                    f"{option}={configured!r}: {d} is not a directory; {self._layout()}"
                )
            return d
        for name in defaults:
            d = self.root / name
            if d.is_dir():
                return d
        return None
