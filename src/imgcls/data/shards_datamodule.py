"""``data=shards``: train from LitData shards written by ``scripts/make_shards.py``.

Samples go through the stream path's transforms (``imgcls.engine.streaming.loader``), so the model gets the
same ``DataSpec``, checkpoints, predict and export as one trained with ``data.loading=stream``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from imgcls.data.base_datamodule import ImageDataModule, Splits
from imgcls.data.dup_hash import Hashes
from imgcls.data.roots import DataRoot
from imgcls.engine.streaming.loader import (
    DecodeErrors,
    StreamOptions,
    check_loading,
    eval_decoder,
    eval_transform_dict,
    train_decoder,
)
from imgcls.engine.streaming.shards import HASHES, META, ShardSample, read_meta, shard_loader
from imgcls.errors import DataError

log = logging.getLogger(__name__)


class ShardsDataModule(ImageDataModule):
    """Streams LitData shards (``<root>/meta.json`` + one folder per split).

    ``stream`` as the file sources' ``data.stream``; mean/std default to those in ``meta.json``.
    A local root's files must lie in it, symlinks resolved (``allow_outside_root``: see
    ``imgcls.data.roots``)."""

    def __init__(
        self,
        root: str,
        on_decode_error: str = "stop",
        stream: Mapping[str, Any] | None = None,
        seed: int = 42,
        num_workers: int = 2,
        allow_outside_root: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_workers=num_workers, **kwargs)
        check_loading("stream", on_decode_error, 1)
        self.root, self.allow_outside_root = str(root), bool(allow_outside_root)
        self.stream_options = StreamOptions.from_config(stream)
        self.decode_errors = DecodeErrors(on_decode_error, f"shards {self.root}")
        self.seed, self.loading_used = int(seed), "stream"
        self.stream_info: dict[str, Any] = {}

    def describe(self) -> str:
        return f"shards {self.root}"

    def _check_local(self, splits: list[str]) -> None:
        """Every file LitData will read from a local root lies in it (symlinks resolved)."""
        data_root, refused = DataRoot(self.root, self.allow_outside_root), list[tuple[str, str]]()
        data_root.named(Path(self.root) / META)
        for name in splits:
            if (Path(self.root) / name).is_dir():
                data_root.images(Path(self.root) / name, ("",), refused)
        if refused:
            raise DataError(f"{self.describe()}: {refused[0][1]}")

    def load_splits(self) -> Splits:
        local = "://" not in self.root
        if local:
            self._check_local([])  # meta.json, before reading it
        meta = read_meta(self.root)
        if local:
            self._check_local(list(meta["splits"]))
        self.class_names = tuple(str(c) for c in meta["class_names"])
        size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
        eval_desc = eval_transform_dict(self.stream_options, size)
        self.stream_info = {"channels": int(meta["channels"]), "image_size": size}
        self.stream_info["eval_transform"] = eval_desc
        if self._mean is None:
            self._mean, self._std = tuple(meta["mean"]), tuple(meta["std"])
        splits = Splits()
        for name, n in meta["splits"].items():
            if not (Path(self.root) / name).exists() and "://" not in self.root:
                raise DataError(
                    f"{self.describe()}: split folder {Path(self.root) / name} is missing"
                )
            splits[name] = range(int(n))  # type: ignore[assignment]  # the size; data in shards
        if "train" not in splits:
            raise DataError(f"{self.describe()} has no train split")
        log.info(
            "%s: %s; %d classes; %d loader workers per rank; eval %s",
            *(self.describe(), ", ".join(f"{s} {len(d)}" for s, d in splits.items())),
            *(len(self.class_names), self.num_workers, eval_desc),
        )
        return splits

    def hash_splits(self) -> dict[str, Hashes]:
        """The hashes ``make_shards.py`` stored (no pass over the shards at start-up)."""
        path = Path(self.root) / HASHES
        if not path.is_file():
            log.info(
                "%s: no %s (written by make_shards.py): data checks skipped", self.root, HASHES
            )
            return {}
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return {s: Hashes(**h) for s, h in stored.items() if s in (self.splits or {})}

    def fingerprint(self, split: str) -> str:
        self.setup()
        index = Path(self.root) / split / "index.json"
        digest = (
            hashlib.sha256(index.read_bytes()).hexdigest()[:32] if index.is_file() else "remote"
        )
        return f"{type(self).__name__}/{split}/{digest}"

    def _input_shape(self) -> tuple[int, int, int]:
        h, w = self.stream_info["image_size"]
        return int(self.stream_info["channels"]), int(h), int(w)

    def _eval_transform(self) -> dict[str, Any] | None:
        return self.stream_info["eval_transform"]

    def _loader(self, name: str, train: bool = False, num_workers: int | None = None) -> DataLoader:
        self._split(name)
        size, channels = self.stream_info["image_size"], self.stream_info["channels"]
        tf = (
            train_decoder(self.stream_options, size, channels)
            if train
            else eval_decoder(self.stream_info["eval_transform"], channels)
        )
        world = self.trainer.world_size if self.trainer is not None else 1
        batch_size = self.batch_size
        if not train:
            # LitData splits evaluation data by whole batches: a batch larger than a worker's
            # share would leave ranks without data (and Lightning refuses empty loaders)
            share = len(self._split(name)) // (world * max(1, self.num_workers))
            batch_size = max(1, min(self.eval_batch_size, share))
        sample = ShardSample(tf, name)
        args = (batch_size, self.num_workers, train, self.seed)
        loader = shard_loader(self.root, name, sample, *args)
        per_rank = loader.dataset.get_len(self.num_workers, batch_size) if train else 0
        if train and per_rank * world < len(self._split(name)):
            log.warning(
                "%s: %d of %d training samples per epoch (%d per rank): LitData gives every "
                "rank and worker whole chunks and trims them to equal length; the rest "
                "rotates between epochs (write ranks x workers x k chunks of equal size "
                "with make_shards.py --chunk-size to use all)",
                *(self.describe(), per_rank * world, len(self._split(name)), per_rank),
            )
        return loader

    def test_dataloader(self) -> DataLoader:
        self.setup()
        assert self.splits is not None
        if "test" not in self.splits:
            log.warning("%s has no test split: testing on the validation split", self.describe())
            return self._loader("val")
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        raise DataError(
            f"{self.describe()}: predict from files (python src/predict.py input=<dir or csv>)"
        )

    def on_after_batch_transfer(self, batch: Sequence[Any], dataloader_idx: int) -> Any:
        images, targets, errors, _ = batch
        self.decode_errors.handle(errors)
        return super().on_after_batch_transfer((images, targets), dataloader_idx)
