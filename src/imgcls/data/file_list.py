"""A dataset whose layout the CSV and folder options do not cover: subclass
``FileListDataModule``, implement ``list_files``, and write a YAML that extends
``configs/bases/file_source.yaml`` (README, "Add a dataset")."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from imgcls.data.file_checks import ImageEntry, Problems
from imgcls.data.file_source import SPLIT_ORDER, FileImageDataModule
from imgcls.data.roots import DataRoot
from imgcls.errors import DataError

Pairs = Mapping[str, Iterable[tuple[str | os.PathLike, Any]]]


class FileListDataModule(FileImageDataModule):
    """Images under ``root`` that ``list_files`` names as ``(path, label)`` pairs per split.

    Everything else is the file-source base's: one error naming every missing, corrupt or
    escaping file, val/test held out per class when not listed, folds, decoding and its cache,
    streaming, leakage checks. ``name`` is how messages call the dataset."""

    def __init__(self, root: str = ".", name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.name = name or type(self).__name__

    def list_files(self) -> Pairs:
        """``{"train": [(path, label), ...], "val": ..., "test": ..., "predict": ...}``: paths
        relative to ``self.root`` (or absolute inside it); labels are class names (``str(label)``);
        ``train`` is required; ``predict`` images have label ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must implement list_files()")

    def describe(self) -> str:
        return f"{self.name} {self.root}"

    def list_entries(self, problems: Problems) -> dict[str, list[ImageEntry]]:
        if not self.root.is_dir():
            raise DataError(f"{self.describe()}: data.root {self.root} is not a directory")
        listed = self.list_files()
        unknown = sorted(set(listed) - set(SPLIT_ORDER))
        if unknown:
            raise DataError(
                f"{self.describe()}: list_files() returned split(s) {unknown}; "
                f"use {', '.join(SPLIT_ORDER)}"
            )
        root = DataRoot(self.root, self.allow_outside_root)
        return {
            split: self._entries(split, pairs, root, problems) for split, pairs in listed.items()
        }

    def _entries(
        self, split: str, pairs: Iterable[Any], root: DataRoot, problems: Problems
    ) -> list[ImageEntry]:
        entries = []
        for i, pair in enumerate(pairs):
            where = f"{split} item {i}"
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                problems.add(where, f"expected a (path, label) pair, got {pair!r}")
                continue
            path = self.root / pair[0]  # an absolute path stays itself
            label = None if pair[1] is None else str(pair[1]).strip()
            name = os.path.relpath(path, self.root)
            where = f"{where} ({name})"
            if label == "" or (label is None and split != "predict"):
                problems.add(where, f"empty label in the {split} split")
                continue
            try:
                root.admit(path)
            except DataError as e:
                problems.add(where, str(e))
                continue
            entries.append(ImageEntry(path, label, name, where))
        return entries
