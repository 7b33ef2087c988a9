"""Convert a CSV or folder dataset into LitData shards that ``data=shards`` streams.

    python scripts/make_shards.py --out data/digits_shards data=folder
    python scripts/make_shards.py --out data/digits_csv_shards data=csv data.root=data/digits_csv
    python src/train.py data=shards data.root=data/digits_shards trainer=ddp_sim

Everything after the options is a Hydra override of the training config's ``data`` group, so
the dataset is listed and validated exactly as for training (traversal, empty labels, unknown
classes, missing files); every file is then fully decoded once (``--no-verify`` skips this),
so that a shard never holds an unreadable image. The files' bytes are stored unchanged;
``meta.json`` keeps the classes, channels, model input size and the mean/std; ``hashes.pt``
the image hashes of the data checks (docs/data.md).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import imgcls  # noqa: F401  (registers the ${project_root:} resolver)
from imgcls.data.file_source import FileImageDataModule, Problems
from imgcls.data.images import decode_image
from imgcls.engine.streaming.shards import HASHES, write_meta, write_split
from imgcls.errors import DataError, UserError
from imgcls.utils.config import project_root

log = logging.getLogger("make_shards")


def _verify(dm: FileImageDataModule, threads: int) -> None:
    """Decode every listed file in full; one ``DataError`` names each unreadable one."""
    problems = Problems()
    items = [e for entries in dm.entries.values() for e in entries]

    def check(it) -> str | None:
        try:
            decode_image(it.path, dm.stream_info["channels"])
        except DataError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for it, err in zip(items, pool.map(check, items), strict=True):
            if err:
                problems.add(it.where, err)
    problems.raise_if_any(dm.describe())


def convert(
    out: Path,
    overrides: list[str],
    chunk_bytes: str,
    workers: int,
    verify: bool,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict:
    with initialize_config_dir(str(project_root() / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "data.loading=stream", "data.cache_dir=null"])
    dm = instantiate(cfg.data)
    if not isinstance(dm, FileImageDataModule):
        raise UserError(
            f"data={cfg.data._target_}: make_shards converts the csv and folder sources"
        )
    dm.setup()  # listing, validation, header pre-pass, mean/std
    assert dm.splits is not None
    if verify:
        t0 = time.perf_counter()
        _verify(dm, workers)
        log.info("decoded every file once to verify it (%.1f s)", time.perf_counter() - t0)
    sizes = {}
    for split, ds in dm.splits.items():
        if split == "predict":  # unlabeled: predict.py reads the files themselves
            continue
        labels = ds.targets.tolist()  # the stream path keeps the val split decoded: list entries
        items = [(str(e.path), labels[i], i, e.name) for i, e in enumerate(dm.entries[split])]
        # Listings are sorted by class; LitData shuffles chunks and items within a window,
        # so the shards are written in one seeded random order (``index`` keeps the listing's).
        random.Random(seed).shuffle(items)
        t0 = time.perf_counter()
        write_split(items, out / split, chunk_bytes, workers, chunk_size)
        sizes[split] = len(items)
        log.info(
            "%s: %d samples -> %s (%.1f s)",
            split,
            len(items),
            out / split,
            time.perf_counter() - t0,
        )
    meta = {
        "source": dm.describe(),
        "class_names": list(dm.class_names),
        "channels": int(dm.stream_info["channels"]),
        "image_size": list(dm.stream_info["image_size"]),
        "mean": list(dm.spec.mean),
        "std": list(dm.spec.std),
        "splits": sizes,
    }
    if dm.split_hashes:  # the data checks of data=shards compare these (no decode at train time)
        torch.save({s: h.to_dict() for s, h in dm.split_hashes.items()}, out / HASHES)
    write_meta(out, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="shard root to write")
    parser.add_argument("--chunk-bytes", default="64MB", help="LitData chunk size (e.g. 64MB)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="samples per chunk instead of --chunk-bytes. LitData gives each rank and loader "
        "worker whole training chunks: write at least ranks x workers chunks",
    )
    parser.add_argument("--workers", type=int, default=1, help="writer processes / verify threads")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the order samples are written in"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the full decode check")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. data=folder data.root=..."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = convert(
            args.out,
            args.overrides,
            args.chunk_bytes,
            args.workers,
            not args.no_verify,
            args.seed,
            args.chunk_size,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"shards written to {args.out}: {meta['splits']}; train with: "
        f"python src/train.py data=shards data.root={args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
