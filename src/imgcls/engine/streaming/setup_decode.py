"""The stream path's one decode per file at set-up, shared by every job that needs pixels first.

Three set-up jobs need decoded images: the leakage checks hash every train/val/test file, the
normalization measures a sample of training images, and the validation split is kept in memory
when it fits the budget (its transform is deterministic: the sanity check and every val epoch
then read memory instead of decoding each file again, and no loader worker decodes a whole
eval batch while the other waits). Each job once decoded on its own, and a photo's entropy
decoding costs about the same at any DCT scale (3 MP: 9.0 ms at 1/8, 10.4 ms at 1/2), so one
pass decodes each file once, at the model size as the memory path does, and serves all three.
Files go through in chunks: memory holds one chunk, the sample and the val split."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from imgcls.data.base_datamodule import Splits
from imgcls.data.checks import SPLITS
from imgcls.data.dup_hash import SIDE, Hashes, hash_images
from imgcls.data.file_checks import ImageEntry
from imgcls.errors import DataError

CHUNK = 256  # files decoded (threads) and hashed together
Decode = Callable[[Path], Tensor]  # a file -> uint8 (C, H, W)


@dataclass
class SetupDecode:
    """What the pass found: hashes (a row per hashed path; failed files have none), the
    sampled training images, the val split's images (or ``None``) and its files that failed."""

    rows: dict[Path, int] = field(default_factory=dict)
    hashes: Hashes = field(default_factory=lambda: _joined([]))
    sample: list[Tensor] = field(default_factory=list)
    val: Tensor | None = None
    val_errors: list[str] = field(default_factory=list)

    def split_hashes(
        self, entries: Mapping[str, list[ImageEntry]], splits: Splits, root: str | os.PathLike
    ) -> dict[str, Hashes]:
        """Per checked split, the hashes of its decoded files, named relative to ``root``."""
        h, out = self.hashes, {}
        for s in (s for s in SPLITS if s in splits):
            keep = [i for i, e in enumerate(entries[s]) if e.path in self.rows]
            idx = torch.tensor([self.rows[entries[s][i].path] for i in keep], dtype=torch.long)
            names = entry_names(entries[s], root)
            out[s] = Hashes(
                h.exact[idx], h.phash[idx], h.thumb[idx],
                [names[i] for i in keep], splits[s].targets[keep],
            )  # fmt: skip
        return out


def decode_once(
    entries: Mapping[str, list[ImageEntry]],
    decode: Decode,
    eval_decode: Decode,
    *,
    hash_splits: bool,
    sample: list[Path],
    val_bytes: int,
    val_budget: float,
    threads: int,
) -> SetupDecode:
    """Each file a job needs, decoded once with ``decode`` (the model size, whole image): all
    train/val/test files when ``hash_splits``, the training files in ``sample``, and the val
    split (through ``eval_decode``: the same function unless ``eval_resize`` crops) when its
    ``val_bytes`` fit ``val_budget``."""
    found = SetupDecode()
    hashed = [e.path for s in SPLITS for e in entries.get(s, [])] if hash_splits else []
    val = entries.get("val", []) if 0 < val_bytes <= val_budget else []
    keep_val = {e.path: None for e in val}
    in_sample = set(sample)
    same = eval_decode is decode
    files = list(dict.fromkeys([*hashed, *sample, *(keep_val if same else [])]))
    hashed_set = set(hashed)
    errors: dict[Path, str] = {}

    def one(path: Path, fn: Decode = decode) -> Tensor | None:
        try:
            return fn(path)
        except DataError as e:
            errors[path] = str(e)
            return None

    kept: dict[Path, Tensor] = {}
    parts: list[Hashes] = []
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode") as pool:
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            decoded = zip(chunk, pool.map(one, chunk), strict=True)
            good = [(p, x) for p, x in decoded if x is not None]
            to_hash = [(p, x) for p, x in good if p in hashed_set]
            if to_hash:
                base = len(found.rows)
                found.rows.update((p, base + i) for i, (p, _) in enumerate(to_hash))
                stacked = torch.stack([x for _, x in to_hash])
                parts.append(hash_images(stacked, threads=threads))
            found.sample += [x for p, x in good if p in in_sample]
            kept.update((p, x) for p, x in good if p in keep_val)
        if not same and keep_val:  # eval_resize crops: the val split's own decode
            paths = list(keep_val)
            crops = pool.map(lambda p: one(p, eval_decode), paths)
            kept.update((p, x) for p, x in zip(paths, crops, strict=True) if x is not None)
    found.hashes = _joined(parts)
    if val:
        found.val_errors = [f"{errors[e.path]} ({e.where})" for e in val if e.path in errors]
        if not found.val_errors:
            found.val = torch.stack([kept[e.path] for e in val])
    return found


def _joined(parts: list[Hashes]) -> Hashes:
    """The chunks' hashes as one (rows in decode order)."""
    if not parts:
        empty = torch.empty(0, dtype=torch.int64)
        return Hashes(empty, empty, torch.empty(0, SIDE * SIDE, dtype=torch.uint8))
    cat = [torch.cat([getattr(p, k) for p in parts]) for k in ("exact", "phash", "thumb")]
    return Hashes(cat[0], cat[1], cat[2])


def entry_names(entries: Sequence[ImageEntry], root: str | os.PathLike = "/") -> list[str]:
    """The checked images' names: their paths relative to the data ``root``."""
    base = os.path.join(os.path.abspath(root), "")
    full = (os.path.abspath(e.path) for e in entries)
    return [p[len(base) :] if p.startswith(base) else p for p in full]
