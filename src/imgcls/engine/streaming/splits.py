"""How a file source picks memory or stream loading, and sets up its stream splits.

``resolve_loading`` settles ``data.loading=auto`` from the decoded size of the listed files;
``stream_splits`` runs the fast pre-pass (each file exists and has an image header, read by PIL
without decoding) and builds one ``StreamImageDataset`` per split. Listing checks (traversal,
empty labels, unknown classes) ran before, as for memory."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from imgcls.data.base_datamodule import Splits
from imgcls.data.checks import SPLITS
from imgcls.data.dup_hash import Hashes, hash_files
from imgcls.data.file_checks import channels_of, first_size, probe_files
from imgcls.data.images import target_size
from imgcls.data.stats import log_mean_std, measure_mean_std
from imgcls.engine.streaming.loader import (
    SampleDecoder,
    StreamImageDataset,
    StreamItem,
    eval_decoder,
    eval_transform_dict,
    train_decoder,
)
from imgcls.errors import DataError

if TYPE_CHECKING:
    from imgcls.data.file_source import FileImageDataModule, Plan

log = logging.getLogger(__name__)

MB = 1024 * 1024


def decoded_size(dm: FileImageDataModule, order: list[Path], stats: dict) -> tuple[int, str]:
    """Bytes the memory path would decode (uint8 at the target size), and how it was counted."""
    channels = dm.channels or 3  # unknown channels: count RGB, the upper bound
    size = dm.target_image_size
    if size is None:
        found = first_size([p for p in order if p in stats][:1], dm.resize_factor)
        if found is None:
            return 0, "first file unreadable"
        size = found[1]
    nbytes = len(order) * channels * size[0] * size[1]
    return nbytes, f"{len(order)} images x {channels}x{size[0]}x{size[1]} uint8"


def resolve_loading(dm: FileImageDataModule, order: list[Path], stats: dict) -> str:
    """``memory`` or ``stream`` for ``dm.loading`` (``auto`` compares with the budget)."""
    if dm.loading != "auto":
        log.info("data.loading=%s", dm.loading)
        return dm.loading
    nbytes, how = decoded_size(dm, order, stats)
    choice, rel = ("memory", "within") if nbytes <= dm.memory_budget_mb * MB else ("stream", "over")
    msg = "data.loading=auto chose %s: the decoded set would take %.1f MB (%s), %s data.memory_budget_mb=%g"
    log.info(msg, choice, nbytes / MB, how, rel, dm.memory_budget_mb)
    return choice


def _measure(dm: FileImageDataModule, train: StreamImageDataset, eval_tf: SampleDecoder) -> None:
    """Mean/std on a seeded sample of training images through the eval transform (in threads)."""
    n = min(len(train), max(1, dm.stream_options.mean_std_sample))
    g = torch.Generator().manual_seed(dm.split_seed)
    idx = torch.randperm(len(train), generator=g)[:n].tolist()
    sample = StreamImageDataset([train.items[i] for i in idx], eval_tf)
    with ThreadPoolExecutor(max(1, dm.num_workers)) as pool:  # PIL releases the GIL
        images = [
            x for x, _, _ in pool.map(sample.__getitem__, range(len(sample))) if x is not None
        ]
    if not images:
        raise DataError(f"{dm.describe()}: no training image could be decoded to measure mean/std")
    dm._mean, dm._std = measure_mean_std(torch.stack(images))
    log_mean_std(dm._mean, dm._std, f"{len(images)} training images")


def stream_splits(dm: FileImageDataModule, plan: Plan) -> Splits:
    """Pre-pass the files and build the per-sample datasets of every split."""
    order = plan.order
    probed = probe_files(
        [p for p in order if p in plan.stats], plan.where, plan.problems, dm.num_workers
    )
    plan.problems.raise_if_any(dm.describe())
    channels = dm.channels
    if channels is None:
        channels = channels_of(probed)
        log.info("channels: %d (from the file headers; set data.channels to choose)", channels)
    size = dm.target_image_size or target_size(probed[order[0]][0], None, dm.resize_factor)
    eval_desc = eval_transform_dict(dm.stream_options, size)
    eval_tf = eval_decoder(eval_desc, channels)
    train_tf = train_decoder(dm.stream_options, size, channels)
    dm.decode_errors.context = dm.describe()
    dm.stream_info = {"channels": channels, "image_size": size, "eval_transform": eval_desc}

    splits = Splits()
    for s, entries in dm.entries.items():
        label = [-1 if e.label is None else plan.class_index[e.label] for e in entries]
        items = [StreamItem(e.path, y, e.where) for e, y in zip(entries, label, strict=True)]
        splits[s] = StreamImageDataset(items, train_tf if s == "train" else eval_tf)
        about = {"loading": "stream", "channels": channels, "eval_transform": eval_desc}
        dm.set_fingerprint(s, about, plan.stats)
    if dm._mean is None:
        _measure(dm, splits["train"], eval_tf)
    native, dt = len({hw for hw, _ in probed.values()}), time.perf_counter() - plan.t0
    msg = "%s: streaming %d files (%d native sizes, headers checked in %.1f s); %d classes; "
    args = (dm.describe(), len(order), native, dt, len(dm.class_names))
    opts = (dm.stream_options.train_crop, eval_desc, dm.num_workers)
    log.info(msg + "train %s, eval %s; %d loader workers", *args, *opts)
    return splits


def entry_names(dm: FileImageDataModule, split: str) -> list[str]:
    """The checked images' names: their paths relative to the data root."""
    root = os.path.join(os.path.abspath(getattr(dm, "root", "/")), "")
    paths = (os.path.abspath(e.path) for e in dm.entries[split])
    return [p[len(root) :] if p.startswith(root) else p for p in paths]


def hash_streamed(dm: FileImageDataModule) -> dict[str, Hashes]:
    """Hashes of every listed file from one small decode each (each file once)."""
    assert dm.splits is not None
    splits = [s for s in SPLITS if s in dm.splits]
    paths = list(dict.fromkeys(e.path for s in splits for e in dm.entries[s]))
    channels = int(dm.stream_info["channels"])
    hashes, ok = hash_files(paths, channels, max(1, dm.num_workers))
    row = {paths[i]: r for r, i in enumerate(ok)}
    out = {}
    for s in splits:
        names = entry_names(dm, s)
        keep = [i for i, e in enumerate(dm.entries[s]) if e.path in row]
        idx = torch.tensor([row[dm.entries[s][i].path] for i in keep], dtype=torch.long)
        out[s] = Hashes(
            hashes.exact[idx], hashes.phash[idx], hashes.thumb[idx],
            [names[i] for i in keep], dm.splits[s].targets[keep],
        )  # fmt: skip
    return out
