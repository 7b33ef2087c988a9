"""Checks of a source's file list, collected so that ONE ``DataError`` names every bad file."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.data.images import GRAY_MODES, probe_image, target_size
from imgcls.errors import DataError

if TYPE_CHECKING:
    from imgcls.data.base_datamodule import Splits
    from imgcls.data.decode_cache import DecodedCache

Probed = dict[Path, tuple[tuple[int, int], str]]


@dataclass(frozen=True)
class ImageEntry:
    """One listed image. ``name``: the CSV id or relative path predictions are written against;
    ``where``: e.g. ``"train.csv row 3 (line 4), column 'id'"``; ``label`` ``None``: unlabeled."""

    path: Path
    label: str | None
    name: str
    where: str


class Problems(list[str]):
    """Per-entry problems collected during validation, raised together as one ``DataError``."""

    limit = 25

    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}" if where else message)

    def raise_if_any(self, context: str) -> None:
        if not self:
            return
        # by file, then row number ("row 9" before "row 10"), whatever the stage that found it
        self.sort(key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
        if len(self) == 1:
            raise DataError(f"{self[0]} [{context}]")
        shown = "\n".join(f"  - {p}" for p in self[: self.limit])
        tail = f"\n  ... and {len(self) - self.limit} more" if len(self) > self.limit else ""
        raise DataError(f"{len(self)} problems in {context}:\n{shown}{tail}")


@dataclass
class FileListing:
    """The checked file list, fixed before decoding: one decode order for all splits (each
    split is then a contiguous slice of one tensor), positions, file stats, the class index,
    the problems found, the cache."""

    order: list[Path]
    position: dict[Path, int]
    where: dict[Path, str]
    stats: dict[Path, tuple[int, int]]
    class_index: dict[str, int]
    problems: Problems
    t0: float
    cache: DecodedCache | None = None
    streamed: Splits | None = None  # data.loading=stream: the per-sample splits, no decode


def sort_class_names(labels: Sequence[str] | set[str]) -> tuple[str, ...]:
    """Class names in a stable order: numerically when every label is an integer, else as text."""
    unique = set(labels)

    def is_int(s: str) -> bool:
        try:
            int(s)
        except ValueError:
            return False
        return True

    if unique and all(is_int(s) for s in unique):
        return tuple(sorted(unique, key=lambda s: (int(s), s)))
    return tuple(sorted(unique))


def drop_unknown_labels(
    listed: dict[str, list[ImageEntry]], class_names: Sequence[str], problems: Problems
) -> None:
    """Val/test entries whose label is not a training class: one problem per label, entries dropped."""
    known = set(class_names)
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    for split in ("val", "test"):
        if split not in listed:
            continue
        unknown: dict[str, list[ImageEntry]] = {}
        for e in listed[split]:
            if e.label is not None and e.label not in known:
                unknown.setdefault(e.label, []).append(e)
        for label, bad in unknown.items():
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            problems.add(
                bad[0].where,
                f"label {label!r} ({split} split{more}) is not a class of the training data "
                f"(classes: {shown})",
            )
        listed[split] = [e for e in listed[split] if e.label is None or e.label in known]


def stat_files(
    order: Sequence[Path], where: dict[Path, str], problems: Problems, hint: Callable[[Path], str]
) -> dict[Path, tuple[int, int]]:
    """(size, mtime_ns) of each present file: what the cache keys and fingerprints hash."""
    stats: dict[Path, tuple[int, int]] = {}
    for p in order:
        try:
            st = os.stat(p)
        except OSError:
            problems.add(where[p], f"image file not found: {p}{hint(p)}")
            continue
        stats[p] = (st.st_size, st.st_mtime_ns)
    return stats


def report_each(
    paths: Sequence[Path],
    check: Callable[[Path], object],
    where: dict[Path, str],
    problems: Problems,
    threads: int,
) -> None:
    """Run ``check`` on every path in threads (PIL releases the GIL); each ``DataError`` becomes
    a problem, in listing order whatever thread finished first."""

    def run(p: Path) -> str | None:
        try:
            check(p)
        except DataError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for p, err in zip(paths, pool.map(run, paths), strict=True):
            if err is not None:
                problems.add(where[p], err)


def probe_files(
    paths: Sequence[Path], where: dict[Path, str], problems: Problems, threads: int
) -> Probed:
    """Header (size, mode) of every file, without decoding the pixels; unreadable ones are problems."""
    probed: Probed = {}

    def probe(p: Path) -> None:
        probed[p] = probe_image(p)

    report_each(paths, probe, where, problems, threads)
    return probed


def first_size(
    paths: Sequence[str | os.PathLike], resize_factor: int | None
) -> tuple[str | os.PathLike, tuple[int, int]] | None:
    """The first readable file and its native size over ``resize_factor``."""
    for p in paths:
        with contextlib.suppress(DataError):
            return p, target_size(probe_image(p)[0], None, resize_factor)
    return None


def channels_of(probed: Probed) -> int:
    return 1 if all(mode in GRAY_MODES for _, mode in probed.values()) else 3


def common_size(
    probed: Probed,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
    problems: Problems,
) -> tuple[int, int] | None:
    """The one decoded size of the probed files, or ``None`` (a problem listing the sizes)."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for p, (native, _) in probed.items():
        sizes.setdefault(target_size(native, image_size, resize_factor), []).append(p)
    if len(sizes) == 1:
        return next(iter(sizes))
    common = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
    listing = "; ".join(f"{h}x{w} ({len(ps)} images, e.g. {ps[0]})" for (h, w), ps in common[:4])
    how = "resized by data.resize_factor" if resize_factor else "as stored"
    problems.add(
        "",
        f"the images have {len(sizes)} different sizes ({how}): {listing}; "
        f"set data.image_size=[height,width] to resize them all to one size",
    )
    return None
