"""Seeded, stratified hold-outs of a file source's training list: test, k-fold or validation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from imgcls.data.file_checks import ImageEntry
from imgcls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Listed = dict[str, list[ImageEntry]]


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val) in the original order, holding out ``val_fraction`` of each class;
    every class with two or more items keeps one in each part."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction must be in (0, 1) when no validation data is given, got {val_fraction}"
        )
    g = torch.Generator().manual_seed(int(seed))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    val: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        k = min(max(round(len(idx) * val_fraction), 1), len(idx) - 1) if len(idx) >= 2 else 0
        val += [idx[j] for j in torch.randperm(len(idx), generator=g)[:k].tolist()]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def check_folds(num_folds: int | None, fold: int | None) -> None:
    """Refuse fold settings that cannot give a k-fold split (before any data is read)."""
    if num_folds is None:
        if fold is not None:
            raise ConfigError(f"data.fold={fold} needs data.num_folds (e.g. 5)")
        return
    if int(num_folds) < 2:
        raise ConfigError(f"data.num_folds must be >= 2 (or null: no folds), got {num_folds}")
    if fold is None or not 0 <= int(fold) < int(num_folds):
        raise ConfigError(
            f"data.fold must be in 0..{int(num_folds) - 1} for data.num_folds={num_folds}, got {fold}"
        )


def stratified_folds(labels: Sequence[int], num_folds: int, seed: int) -> np.ndarray:
    """Fold (0..k-1) of each item: each class shuffled (seeded), then dealt round-robin from
    where the previous class stopped, so per-class and total fold sizes differ by at most one."""
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y) if len(y) else np.zeros(0, dtype=np.int64)
    small = [c for c, n in enumerate(counts) if 0 < n < num_folds]
    if small:
        raise ConfigError(
            f"data.num_folds={num_folds} but class index {small[0]} has only {counts[small[0]]} "
            f"training images (every class needs at least num_folds)"
        )
    rng = np.random.default_rng(int(seed))
    folds = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.flatnonzero(counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = (start + np.arange(len(idx))) % num_folds
        start = (start + len(idx)) % num_folds
    return folds


def _labels(entries: list[ImageEntry], class_index: dict[str, int]) -> list[int]:
    return [class_index[e.label] for e in entries]  # type: ignore[index]


def hold_out_test(
    listed: Listed, class_index: dict[str, int], fraction: float, seed: int, source: str
) -> None:
    """Move ``fraction`` of each training class into a labeled ``test`` split."""
    if listed.get("test"):
        raise ConfigError(
            f"data.test_fraction={fraction} but {source} already has a "
            "labeled test split; set data.test_fraction=null"
        )
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1) or null, got {fraction}")
    pool = listed["train"]
    # a seed of its own: the validation draw that follows stays seeded by split_seed
    rest, test = stratified_split(_labels(pool, class_index), fraction, seed + 1)
    if not test:
        raise DataError(f"{source}: too few training images to hold out a test set")
    listed["train"], listed["test"] = [pool[i] for i in rest], [pool[i] for i in test]
    msg = "data.test_fraction: holding out %.0f%% of each class as the test split (%d images, stratified, seed %d), apart from validation"
    log.info(msg, 100 * fraction, len(test), seed + 1)


def fold_split(
    listed: Listed, class_index: dict[str, int], num_folds: int, fold: int, seed: int
) -> None:
    """Fold ``fold`` of the training pool (after the test hold-out) is val, the rest train."""
    if listed.get("val"):
        log.info("data.num_folds is set: the listed validation images are not used")
    pool = listed["train"]
    folds = stratified_folds(_labels(pool, class_index), num_folds, seed)
    listed["train"] = [e for e, f in zip(pool, folds, strict=True) if f != fold]
    listed["val"] = [e for e, f in zip(pool, folds, strict=True) if f == fold]
    msg = "fold %d of %d: %d validation, %d training images (stratified, seed %d)"
    log.info(msg, fold, num_folds, len(listed["val"]), len(listed["train"]), seed)


def hold_out_val(
    listed: Listed, class_index: dict[str, int], fraction: float, seed: int, source: str
) -> None:
    """Without a validation list, hold out ``fraction`` of each training class."""
    pool = listed["train"]
    tr, va = stratified_split(_labels(pool, class_index), fraction, seed)
    msg = "no validation list: holding out %.0f%% of each class (%d images, stratified, seed %d)"
    log.info(msg, 100 * fraction, len(va), seed)
    listed["train"], listed["val"] = [pool[i] for i in tr], [pool[i] for i in va]
    if not listed["val"]:
        raise DataError(f"{source}: too few training images to hold out a validation set")
