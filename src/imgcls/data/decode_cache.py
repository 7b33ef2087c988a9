"""The on-disk decode cache: uint8 pixels in a raw ``.u8`` file, memory-mapped on reload.

Keyed by the ordered file list with sizes and mtimes plus the decode settings and Pillow's version
(another libjpeg or resampler may give other pixels), so any change decodes afresh."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from filelock import FileLock
from torch import Tensor

from imgcls.errors import DataError
from imgcls.utils.files import atomic_file, atomic_write_text

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: JPEG draft keeps 1x (not 2x) the target
Stats = dict[Path, tuple[int, int]]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:32]


def cache_key(settings: dict[str, Any], order: Sequence[Path], stats: Stats) -> str:
    files = [(str(p), *stats[p]) for p in order]
    return _digest({"v": CACHE_VERSION, "pillow": PIL.__version__, **settings, "files": files})


def fingerprint(
    source: str, split: str, about: dict[str, Any], entries: Sequence, stats: Stats
) -> str:
    """``source/split/hash`` of the split's files (path, size, mtime), labels and ``about``."""
    items = [(str(e.path), *stats[e.path], e.label) for e in entries]
    return f"{source}/{split}/{_digest({'source': source, **about, 'items': items})}"


class CacheUnwritable(Exception):
    """The cache directory cannot hold the file (read-only, not a directory, no mmap)."""


class _Discard(Exception):
    """Leave the temp file: the decode found problems."""


class DecodedCache:
    def __init__(self, cache_dir: str | os.PathLike, key: str) -> None:
        self.dir = Path(cache_dir)
        self.key = key
        self.data = self.dir / f"{key}.u8"
        self.meta = self.dir / f"{key}.json"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One process decodes, the others wait, then load. A file lock, not a collective: set-up
        runs before the trainer, with no process group yet; ``filelock``'s OS lock is dropped when
        its holder exits or dies. No lock (read-only, no directory, no ``flock``): every process
        decodes, each into its own temp file (``fallback_to_soft=False``: a soft lock's marker
        would outlive a crashed holder on another node)."""
        path = self.dir / f"{self.key}.lock"
        held = FileLock(path, fallback_to_soft=False)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            held.acquire()
        except OSError as e:
            log.debug("no lock on %s (%s)", path, e)
        try:
            yield
        finally:
            if held.is_locked:
                # filelock leaves the file; removed while held, the cache directory keeps only
                # .u8/.json. A waiter that locked the removed file sees it unlinked, locks anew.
                with contextlib.suppress(OSError):
                    path.unlink()
                held.release()

    def load(self) -> Tensor | None:
        """The cached tensor (memory-mapped, read-only use), or ``None`` when absent/invalid."""
        if not (self.meta.is_file() and self.data.is_file()):
            return None
        try:
            shape = tuple(int(s) for s in json.loads(self.meta.read_text())["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        numel = math.prod(shape)
        if self.data.stat().st_size != numel:
            log.warning("decode cache %s has the wrong size; decoding again", self.data)
            return None
        if numel == 0:
            return torch.empty(shape, dtype=torch.uint8)
        data = torch.from_file(str(self.data), shared=False, size=numel, dtype=torch.uint8)
        return data.view(shape)

    def write(
        self, shape: tuple[int, ...], fill: Callable[[Tensor], bool], info: dict[str, Any]
    ) -> Tensor:
        """``fill`` a memory-mapped temp file; it becomes the cache when ``fill`` returns True.
        ``DataError`` when the disk is too full, ``CacheUnwritable`` when nothing maps here."""
        numel = math.prod(shape)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.dir).free
        except OSError as e:
            raise CacheUnwritable(e) from e
        if numel > free:
            raise DataError(
                f"decoded images need {fmt_bytes(numel)} but {self.dir} has {fmt_bytes(free)} free: "
                f"free space, set data.cache_dir elsewhere, or data.cache_dir=null to keep them in memory"
            )
        out = None
        try:
            with atomic_file(self.data, "w+b") as f:
                f.truncate(numel)
                # np.memmap takes the open file: the temp file has no name to hand torch.from_file
                out = (
                    torch.from_numpy(np.memmap(f, np.uint8, "r+", shape=shape))
                    if numel
                    else torch.empty(shape, dtype=torch.uint8)
                )
                if not fill(out):
                    raise _Discard
        except _Discard:
            return out  # type: ignore[return-value]
        except (OSError, RuntimeError, ValueError) as e:
            if out is not None:
                raise
            raise CacheUnwritable(e) from e
        # the meta file last: it marks the cache complete
        atomic_write_text(
            self.meta,
            json.dumps({"version": CACHE_VERSION, "shape": list(shape), **info}, indent=1),
        )
        return out
