"""Sharded datasets through LitData: write once, stream on every rank.

Layout written by ``scripts/make_shards.py``::

    <root>/meta.json                  classes, channels, image size, mean/std, split sizes
    <root>/hashes.pt                  image hashes for the data checks (duplicates, leakage)
    <root>/<split>/index.json         LitData's index of the split's chunks
    <root>/<split>/chunk-*.bin        samples {"image": encoded file bytes, "label", "index", "name"}

Files stay encoded (no resize): samples decode crop-first as on the stream path. ``<root>`` may be any
URL LitData reads (``s3://``...); LitData (optional: ``.[stream]``) is imported here only."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imgcls.data.workers import worker_init
from imgcls.engine.streaming.loader import SampleDecoder
from imgcls.errors import ConfigError, DataError
from imgcls.utils.files import atomic_write_text

META = "meta.json"
HASHES = "hashes.pt"  # the data checks' image hashes per split (``imgcls.data.dup_hash``)
META_VERSION = 1


def litdata() -> Any:
    try:
        import litdata as ld
    except ImportError:
        raise ConfigError(
            "data=shards needs LitData: pip install -e '.[stream]' (or pip install litdata==0.2.76)"
        ) from None
    return ld


def _sample(item: tuple[str, int, int, str]) -> dict[str, Any]:
    path, label, index, name = item
    return dict(image=Path(path).read_bytes(), label=int(label), index=int(index), name=name)


def write_split(
    items: Sequence[tuple[str, int, int, str]],
    out_dir: str | Path,
    chunk_bytes: str = "64MB",
    num_workers: int = 1,
    chunk_size: int | None = None,
) -> None:
    """Write one split's ``(path, label, index, name)`` items, in order, as LitData chunks.

    One local worker writes in-process with LitData's ``BinaryWriter`` (what ``optimize`` runs per
    worker, minus its process start-up); more use ``optimize``."""
    ld = litdata()
    if int(num_workers) <= 1 and "://" not in str(out_dir):
        from litdata.streaming.writer import BinaryWriter

        # into a fresh folder, swapped in when complete: a killed run leaves the old shards
        out = Path(out_dir)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        size = {"chunk_size": int(chunk_size)} if chunk_size else {"chunk_bytes": chunk_bytes}
        writer = BinaryWriter(str(tmp), **size)
        for i, item in enumerate(items):
            writer[i] = _sample(item)
        writer.done()
        writer.merge()
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    ld.optimize(
        fn=_sample,
        inputs=list(items),
        output_dir=str(out_dir),
        chunk_bytes=None if chunk_size else chunk_bytes,
        chunk_size=int(chunk_size) if chunk_size else None,
        num_workers=max(1, int(num_workers)),
        mode="overwrite",
        reorder_files=False,
        keep_data_ordered=True,
        verbose=False,
    )


def write_meta(root: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_text(Path(root) / META, json.dumps({"version": META_VERSION, **meta}, indent=1))


def read_meta(root: str) -> dict[str, Any]:
    """``meta.json`` of a shard root (remote roots need a local copy of it)."""
    path = Path(root) / META
    if not path.is_file():
        raise DataError(
            f"no shards at {root}: {path} not found; write them with "
            f"python scripts/make_shards.py --out {root} data=folder data.root=<dataset>"
        )
    try:
        meta = json.loads(path.read_text())
        for key in ("class_names", "channels", "image_size", "splits", "mean", "std"):
            meta[key]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"{path} is not a shard meta file written by make_shards.py ({e})"
        ) from None
    return meta


class ShardSample:
    """LitData ``transform``: a stored sample -> ``(image, label, error, index)``; a sample that
    fails to decode carries its error instead of an image (``streaming.DecodeErrors``)."""

    def __init__(self, decode: SampleDecoder, split: str) -> None:
        self.decode, self.split = decode, split

    def __call__(self, sample: dict[str, Any]) -> tuple[Tensor | None, int, str, int]:
        name = f"{sample['name']} (shard sample {sample['index']} of split {self.split})"
        try:
            image = self.decode(name, bytes(sample["image"]))
        except DataError as e:
            return None, int(sample["label"]), str(e), int(sample["index"])
        return image, int(sample["label"]), "", int(sample["index"])


def collate_shards(samples: list[tuple[Tensor | None, int, str, int]]) -> tuple[Any, ...]:
    """Stack decoded samples: ``(images, targets, errors, indices)`` (indices of good samples)."""
    good = [s for s in samples if s[0] is not None]
    errors = [s[2] for s in samples if s[0] is None]
    empty = torch.empty(0, 1, 1, 1, dtype=torch.uint8)
    images = torch.stack([s[0] for s in good]) if good else empty  # type: ignore[misc]
    targets = torch.tensor([s[1] for s in good], dtype=torch.long)
    indices = torch.tensor([s[3] for s in good], dtype=torch.long)
    return images, targets, errors, indices


def shard_loader(
    root: str,
    split: str,
    sample: ShardSample,
    batch_size: int,
    num_workers: int,
    train: bool,
    seed: int,
) -> Any:
    """A LitData loader over ``<root>/<split>``.

    Training shuffles and trims every rank to the same batch count (DDP's gradient sync needs it).
    Evaluation keeps every sample once (``drop_last=False``): uneven ranks are safe without sync."""
    ld = litdata()
    dataset = ld.StreamingDataset(
        f"{root.rstrip('/')}/{split}",
        shuffle=train,
        drop_last=None if train else False,
        seed=seed,
        transform=sample,
    )
    return ld.StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_shards,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=worker_init if num_workers > 0 else None,
    )
