"""What every DataLoader worker process does first: keep its heap from growing with the epoch,
and seed itself as Lightning would have.

A worker decodes one image after another; glibc's *dynamic* mmap threshold rises to the size of
the largest buffer freed so far, after which those buffers come from the brk heap, whose freed
pages are rarely returned. Measured on 256x256 JPEGs (batch 64, 2 workers): each worker's private
heap grew 90 MB over its first 2000 images and 180 MB over 6000, and stayed at ~5 MB once the
thresholds were fixed with ``mallopt`` (BENCHMARKS.md, Streaming). Fixing them is what
``MALLOC_MMAP_THRESHOLD_`` would do, but it has to happen inside the already-started process."""

from __future__ import annotations

import ctypes
import os

from lightning.fabric.utilities.seed import pl_worker_init_function

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>; any fixed threshold turns the dynamic ones off
MMAP_THRESHOLD_BYTES = 1 << 20  # buffers >= 1 MiB (a large decoded image) go straight to mmap


def fix_malloc_thresholds() -> bool:
    """Turn glibc's dynamic mmap/trim thresholds off in this process; False where not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError, TypeError):  # macOS, Windows: no glibc heap to fix
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of every loader with workers (a set one stops Lightning adding its
    own, so its seeding under ``seed_everything(workers=True)`` is called from here)."""
    fix_malloc_thresholds()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)
