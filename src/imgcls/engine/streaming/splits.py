"""How a file source picks memory or stream loading, and sets up its stream splits.

``resolve_loading`` settles ``data.loading=auto`` from the decoded size of the listed files;
``stream_splits`` runs the fast pre-pass (each file exists and has an image header, read by PIL
without decoding) and builds one ``StreamImageDataset`` per split. Listing checks (traversal,
empty labels, unknown classes) ran before, as for memory. The helpers take the settings they
need and return what they find: the datamodule keeps the results in its own fields."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.data.base_datamodule import Splits
from imgcls.data.checks import SPLITS
from imgcls.data.dup_hash import Hashes, hash_files
from imgcls.data.file_checks import FileListing, ImageEntry, channels_of, first_size, probe_files
from imgcls.data.images import target_size
from imgcls.data.stats import log_mean_std, measure_mean_std
from imgcls.engine.streaming.loader import (
    SampleDecoder,
    StreamImageDataset,
    StreamItem,
    StreamOptions,
    eval_decoder,
    eval_transform_dict,
    train_decoder,
)
from imgcls.errors import DataError

log = logging.getLogger(__name__)

MB = 1024 * 1024
MeanStd = tuple[tuple[float, ...], tuple[float, ...]]


def decoded_size(
    order: list[Path],
    stats: dict,
    channels: int | None,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
) -> tuple[int, str]:
    """Bytes the memory path would decode (uint8 at the target size), and how it was counted."""
    channels = channels or 3  # unknown channels: count RGB, the upper bound
    size = image_size
    if size is None:
        found = first_size([p for p in order if p in stats][:1], resize_factor)
        if found is None:
            return 0, "first file unreadable"
        size = found[1]
    nbytes = len(order) * channels * size[0] * size[1]
    return nbytes, f"{len(order)} images x {channels}x{size[0]}x{size[1]} uint8"


def resolve_loading(
    loading: str,
    memory_budget_mb: float,
    order: list[Path],
    stats: dict,
    channels: int | None,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
) -> str:
    """``memory`` or ``stream`` for ``data.loading`` (``auto`` compares with the budget)."""
    if loading != "auto":
        log.info("data.loading=%s", loading)
        return loading
    nbytes, how = decoded_size(order, stats, channels, image_size, resize_factor)
    choice, rel = ("memory", "within") if nbytes <= memory_budget_mb * MB else ("stream", "over")
    msg = "data.loading=auto chose %s: the decoded set would take %.1f MB (%s), %s data.memory_budget_mb=%g"
    log.info(msg, choice, nbytes / MB, how, rel, memory_budget_mb)
    return choice


def measure_stream_mean_std(
    train: StreamImageDataset,
    eval_tf: SampleDecoder,
    sample_size: int,
    seed: int,
    threads: int,
    source: str,
) -> MeanStd:
    """Mean/std on a seeded sample of training images through the eval transform (in threads)."""
    n = min(len(train), max(1, sample_size))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:n].tolist()
    sample = StreamImageDataset([train.items[i] for i in idx], eval_tf)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL
        images = [
            x for x, _, _ in pool.map(sample.__getitem__, range(len(sample))) if x is not None
        ]
    if not images:
        raise DataError(f"{source}: no training image could be decoded to measure mean/std")
    mean, std = measure_mean_std(torch.stack(images))
    log_mean_std(mean, std, f"{len(images)} training images")
    return mean, std


@dataclass
class StreamSetup:
    """What the stream pre-pass found: the per-sample datasets of every split, the input
    ``info`` (``channels``, ``image_size``, ``eval_transform``) and the measured mean/std
    (``None`` when it was given)."""

    splits: Splits
    info: dict[str, Any]
    mean_std: MeanStd | None

    @property
    def about(self) -> dict[str, Any]:
        """What the splits' fingerprints record besides their files."""
        channels, eval_transform = self.info["channels"], self.info["eval_transform"]
        return {"loading": "stream", "channels": channels, "eval_transform": eval_transform}


def stream_splits(
    listing: FileListing,
    entries: dict[str, list[ImageEntry]],
    options: StreamOptions,
    *,
    channels: int | None,
    image_size: tuple[int, int] | None,
    resize_factor: int | None,
    threads: int,
    seed: int,
    measure: bool,
    source: str,
) -> StreamSetup:
    """Pre-pass the files and build the per-sample datasets of every split; with ``measure``,
    mean/std on a ``seed``-ed sample of the training split."""
    order = listing.order
    present = [p for p in order if p in listing.stats]
    probed = probe_files(present, listing.where, listing.problems, threads)
    listing.problems.raise_if_any(source)
    if channels is None:
        channels = channels_of(probed)
        log.info("channels: %d (from the file headers; set data.channels to choose)", channels)
    size = image_size or target_size(probed[order[0]][0], None, resize_factor)
    eval_desc = eval_transform_dict(options, size)
    eval_tf = eval_decoder(eval_desc, channels)
    train_tf = train_decoder(options, size, channels)
    info = {"channels": channels, "image_size": size, "eval_transform": eval_desc}

    splits = Splits()  # of StreamImageDatasets: they serve the same batches
    for s, split_entries in entries.items():
        label = [-1 if e.label is None else listing.class_index[e.label] for e in split_entries]
        items = [StreamItem(e.path, y, e.where) for e, y in zip(split_entries, label, strict=True)]
        splits[s] = StreamImageDataset(items, train_tf if s == "train" else eval_tf)  # type: ignore[assignment]
    mean_std = None
    if measure:
        train: Any = splits["train"]
        sample = options.mean_std_sample
        mean_std = measure_stream_mean_std(train, eval_tf, sample, seed, threads, source)
    native, dt = len({hw for hw, _ in probed.values()}), time.perf_counter() - listing.t0
    msg = "%s: streaming %d files (%d native sizes, headers checked in %.1f s); %d classes; "
    args = (source, len(order), native, dt, len(listing.class_index))
    opts = (options.train_crop, eval_desc, threads)
    log.info(msg + "train %s, eval %s; %d loader workers", *args, *opts)
    return StreamSetup(splits, info, mean_std)


def entry_names(entries: list[ImageEntry], root: str | os.PathLike = "/") -> list[str]:
    """The checked images' names: their paths relative to the data ``root``."""
    root = os.path.join(os.path.abspath(root), "")
    paths = (os.path.abspath(e.path) for e in entries)
    return [p[len(root) :] if p.startswith(root) else p for p in paths]


def hash_streamed(
    entries: dict[str, list[ImageEntry]],
    splits: Splits,
    channels: int,
    threads: int,
    root: str | os.PathLike = "/",
) -> dict[str, Hashes]:
    """Hashes of every listed file from one small decode each (each file once)."""
    names = [s for s in SPLITS if s in splits]
    paths = list(dict.fromkeys(e.path for s in names for e in entries[s]))
    hashes, ok = hash_files(paths, channels, max(1, threads))
    row = {paths[i]: r for r, i in enumerate(ok)}
    out = {}
    for s in names:
        split_names = entry_names(entries[s], root)
        keep = [i for i, e in enumerate(entries[s]) if e.path in row]
        idx = torch.tensor([row[entries[s][i].path] for i in keep], dtype=torch.long)
        out[s] = Hashes(
            hashes.exact[idx], hashes.phash[idx], hashes.thumb[idx],
            [split_names[i] for i in keep], splits[s].targets[keep],
        )  # fmt: skip
    return out
