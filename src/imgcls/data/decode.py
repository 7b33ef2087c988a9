"""Decode a file list once, in threads (PIL releases the GIL), into one uint8 ``(N, C, H, W)``
tensor: batches are then gathered from memory or the mapped cache, never decoded per epoch."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor

from imgcls.data.decode_cache import CacheUnwritable, DecodedCache, fmt_bytes
from imgcls.data.file_checks import (
    FileListing,
    channels_of,
    common_size,
    first_size,
    probe_files,
    report_each,
)
from imgcls.data.images import decode_image
from imgcls.errors import DataError

log = logging.getLogger(__name__)

SIZE_MISMATCH = "differs in size"


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rank_name() -> str:
    """Global rank (set from the environment before the trainer exists) and pid, for logs."""
    return f"rank {getattr(rank_zero_only, 'rank', 0)} (pid {os.getpid()})"


def decode_images(
    paths: Sequence[str | os.PathLike],
    channels: int,
    size: tuple[int, int] | None = None,
    resize_factor: int | None = None,
    threads: int = 2,
    out: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, list[str | None]]:
    """``paths`` -> uint8 ``(N, C, H, W)`` (into ``out`` if given), and per path ``None`` or an
    error naming the file (its row stays zeros): callers decide whether to stop or skip.
    ``size=None`` keeps the native size (over ``resize_factor``) of the first readable file."""
    n = len(paths)
    found = first_size(paths, resize_factor) if size is None else None
    first, (h, w) = found or (paths[0] if n else "", size or (1, 1))
    if out is None:
        out = torch.zeros(n, channels, h, w, dtype=torch.uint8)
    elif tuple(out.shape) != (n, channels, h, w):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(n, channels, h, w)}")
    errors: list[str | None] = [None] * n

    def decode_one(i: int) -> None:
        try:
            arr = decode_image(paths[i], channels, size, None if size else resize_factor)
        except DataError as e:
            errors[i] = str(e)
            return
        if arr.shape[:2] != (h, w):
            errors[i] = (
                f"image {paths[i]} {SIZE_MISMATCH}: {arr.shape[0]}x{arr.shape[1]} where {first} "
                f"gives {h}x{w}; set an image size to resize them all"
            )
            return
        out[i].copy_(torch.from_numpy(arr).permute(2, 0, 1))

    if n:
        with ThreadPoolExecutor(max(1, int(threads)), thread_name_prefix="decode") as pool:
            for done, _ in enumerate(pool.map(decode_one, range(n)), 1):
                if progress is not None:
                    progress(done, n)
    return out, errors


def _channels_and_size(
    listing: FileListing,
    channels: int | None,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
    threads: int,
) -> tuple[int, tuple[int, int]] | None:
    """Channels and size; ``None`` when problems are all there is to report.

    Headers are probed (a second open per file) only when channels depend on the files or
    problems need a complete report; a size alone needs the first file. With problems, every
    readable file is decoded too, so truncated ones join the same error."""
    threads, problems = max(1, threads), listing.problems
    present = [p for p in listing.order if p in listing.stats]
    size = image_size
    if channels is not None and not problems:
        found = first_size(present[:1], resize_factor) if size is None else (None, size)
        if found is not None:
            return channels, found[1]
    probed = probe_files(present, listing.where, problems, threads)
    if not probed:
        return None
    if channels is None:
        channels = channels_of(probed)
        why = "every image is grayscale" if channels == 1 else "colour images found"
        log.info("channels: %d (%s; set data.channels to choose)", channels, why)
    size = common_size(probed, image_size, resize_factor, problems)
    if size is None:
        return None
    if problems:  # decode the readable files only to report every bad one at once
        readable = [p for p in present if p in probed]
        report_each(
            readable, lambda p: decode_image(p, channels, size), listing.where, problems, threads
        )
        return None
    return channels, size


def _decode_into(
    out: Tensor,
    listing: FileListing,
    channels: int,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
    threads: int,
) -> bool:
    """Decode every file into ``out``; ``True`` when no problem was found (problems go to
    ``listing.problems``)."""
    order, problems = listing.order, listing.problems
    t0 = last = time.perf_counter()

    def progress(done: int, total: int) -> None:
        nonlocal last
        if (now := time.perf_counter()) - last > 10:
            last = now
            log.info("decoded %d/%d images (%.0f images/s)", done, total, done / (now - t0))

    _, errors = decode_images(order, channels, image_size, resize_factor, threads, out, progress)
    mismatched = [p for p, e in zip(order, errors, strict=True) if e and SIZE_MISMATCH in e]
    for p, err in zip(order, errors, strict=True):
        if err is not None and SIZE_MISMATCH not in err:
            problems.add(listing.where[p], err)
    if mismatched:
        how = "resized by data.resize_factor" if resize_factor else "as stored"
        h, w = out.shape[2:]
        problems.add(
            "",
            f"{len(mismatched)} images differ in size ({how}) from {h}x{w} of {order[0]}, "
            f"e.g. {', '.join(str(p) for p in mismatched[:3])}; "
            f"set data.image_size=[height,width] to resize them all to one size",
        )
    dt = max(time.perf_counter() - t0, 1e-9)
    log.info("decoded %d images in %.1f s (%.0f images/s)", len(order), dt, len(order) / dt)
    return not problems


def decode_listing(
    listing: FileListing,
    cache: DecodedCache | None,
    *,
    channels: int | None,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
    threads: int,
    source: str,
) -> Tensor | None:
    """Settle channels and size, decode every listed file (into ``cache`` when given) with
    ``threads``; problems are collected in ``listing.problems`` (the tensor is then not to be
    used). ``source`` names the data in errors."""
    settled = _channels_and_size(listing, channels, image_size, resize_factor, threads)
    if settled is None:
        return None
    found_channels, (h, w) = settled
    shape = (len(listing.order), found_channels, h, w)
    nbytes = math.prod(shape)

    how = f"{shape[1:]} uint8, {fmt_bytes(nbytes)}, {max(1, threads)} threads"

    def decode_logged(out: Tensor, into: str = "memory") -> bool:
        log.info("decoding %d images once into %s: %s, by %s", len(out), into, how, rank_name())
        return _decode_into(out, listing, found_channels, image_size, resize_factor, threads)

    if cache is not None:
        try:
            into = f"on-disk cache {cache.data} (memory-mapped)"
            info = {"files": len(listing.order), "channels": found_channels}
            images = cache.write(shape, lambda out: decode_logged(out, into), info)
            if not listing.problems:
                log.info("cached the decoded images in %s", cache.data)
            return images
        except CacheUnwritable as e:  # read-only mount, no mmap: train without it
            msg = "cannot write the decode cache in %s (%s); decoding into memory"
            log.warning(msg, cache.dir, e)
    avail = available_memory()
    if avail is not None and nbytes > 0.8 * avail:
        raise DataError(
            f"{source}: the decoded images need {fmt_bytes(nbytes)} but only "
            f"{fmt_bytes(avail)} of memory is available; set data.cache_dir=<dir> to keep them "
            f"in a memory-mapped file, or lower data.image_size"
        )
    out = torch.zeros(shape, dtype=torch.uint8)
    decode_logged(out)
    return out
