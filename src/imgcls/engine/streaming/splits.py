"""How a file source picks memory or stream loading, and sets up its stream splits.

``resolve_loading`` settles ``data.loading=auto`` from the decoded size of the listed files;
``stream_splits`` runs the fast pre-pass (each file exists and has an image header, read by PIL
without decoding), builds one ``StreamImageDataset`` per split, then decodes each file the
set-up needs once (``setup_decode``). Listing checks (traversal,
empty labels, unknown classes) ran before, as for memory. The helpers take the settings they
need and return what they find: the datamodule keeps the results in its own fields."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.data.base_datamodule import Splits
from imgcls.data.file_checks import FileListing, ImageEntry, channels_of, first_size, probe_files
from imgcls.data.images import target_size
from imgcls.data.stats import log_mean_std, measure_mean_std
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.engine.streaming.loader import (
    StreamImageDataset,
    StreamItem,
    StreamOptions,
    eval_decoder,
    eval_transform_dict,
    train_decoder,
)
from imgcls.engine.streaming.setup_decode import SetupDecode, decode_once
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


@dataclass
class StreamSetup:
    """What the stream pre-pass found: the per-sample datasets of every split, the input
    ``info`` (``channels``, ``image_size``, ``eval_transform``), the measured mean/std
    (``None`` when it was given) and what the one set-up decode found (hashes, val errors)."""

    splits: Splits
    info: dict[str, Any]
    mean_std: MeanStd | None
    decoded: SetupDecode

    @property
    def about(self) -> dict[str, Any]:
        """What the splits' fingerprints record besides their files."""
        channels, eval_transform = self.info["channels"], self.info["eval_transform"]
        return {"loading": "stream", "channels": channels, "eval_transform": eval_transform}


def _drawn(train: StreamImageDataset, n: int, seed: int) -> list[Path]:
    """``n`` training files drawn with ``seed``: the mean/std sample."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[: min(len(train), max(1, n))]
    return [train.items[i].path for i in idx.tolist()]


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
    hash_splits: bool,
    source: str,
    memory_budget_mb: float,
) -> StreamSetup:
    """Pre-pass the files and build the per-sample datasets of every split; then one decode
    per file (``decode_once``) hashes them for the checks (``hash_splits``), measures mean/std
    on a ``seed``-ed training sample (``measure``) and keeps the val split in memory when it
    fits ``memory_budget_mb``."""
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
    whole = eval_tf  # the whole image at the model size, as the memory path decodes it
    if options.eval_resize is not None:
        whole = eval_decoder({**eval_desc, "resize": list(size), "crop": list(size)}, channels)
    train: Any = splits["train"]
    sample = _drawn(train, options.mean_std_sample, seed) if measure else []
    val_bytes = len(entries.get("val", [])) * channels * size[0] * size[1]
    decoded = decode_once(entries, whole, eval_tf, hash_splits=hash_splits, sample=sample,
                          val_bytes=val_bytes, val_budget=memory_budget_mb * MB,
                          threads=threads)  # fmt: skip
    if decoded.val is not None:
        splits["val"] = TensorImageDataset(decoded.val, splits["val"].targets)
    mean_std = None
    if measure:
        if not decoded.sample:
            raise DataError(f"{source}: no training image could be decoded to measure mean/std")
        mean_std = measure_mean_std(torch.stack(decoded.sample))
        log_mean_std(*mean_std, f"{len(decoded.sample)} training images")
    native, dt = len({hw for hw, _ in probed.values()}), time.perf_counter() - listing.t0
    msg = "%s: streaming %d files (%d native sizes, set-up %.1f s); %d classes; "
    args = (source, len(order), native, dt, len(listing.class_index))
    opts = (options.train_crop, eval_desc, threads)
    log.info(msg + "train %s, eval %s; %d loader workers", *args, *opts)
    return StreamSetup(splits, info, mean_std, decoded)
