"""MNIST from the bundled canonical raw files, decoded once into uint8 tensors."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
from pathlib import Path

import torch
from torchvision.datasets import MNIST
from torchvision.datasets.utils import calculate_md5, check_integrity

from imgcls.data.base_datamodule import ImageDataModule, Splits
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.errors import DataError
from imgcls.utils.files import atomic_file

log = logging.getLogger(__name__)

# md5 of the *uncompressed* canonical files (the bundled .gz were recompressed, so their own
# md5 differs from the download mirrors'; the content is what matters).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _verified(path: Path, md5: str) -> bool:
    """``check_integrity`` once per file version: a stamp (size, mtime, md5) beside the file
    spares hashing 55 MB twice per run start (``prepare_data`` and ``setup``)."""
    st = path.stat()
    stamp, mark = path.with_name(f".{path.name}.verified"), f"{st.st_size} {st.st_mtime_ns} {md5}"
    with contextlib.suppress(OSError):
        if stamp.read_text() == mark:
            return True
    if not check_integrity(path, md5):
        return False
    with contextlib.suppress(OSError):  # a read-only data dir: verify again next time
        stamp.write_text(mark)
    return True


def _decompress(gz: Path, target: Path, md5: str) -> None:
    """Unpack ``gz`` to ``target``, hashed on the way: a wrong archive raises before the
    replace, so ``target`` is never a non-canonical file (not even after a kill)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(gz, "rb") as src, atomic_file(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            if digest.hexdigest() != md5:
                raise DataError(
                    f"MNIST archive {gz} does not hold the canonical {target.name} (md5 mismatch)"
                )
    except (OSError, EOFError) as e:
        raise DataError(f"MNIST archive {gz} cannot be decompressed: {e}") from None
    _verified(target, md5)  # stamps the verified file


def ensure_mnist_raw(data_dir: str | os.PathLike, download: bool = False) -> Path:
    """Make ``<data_dir>/MNIST/raw/<name>`` exist uncompressed and verified; return the raw dir.

    Unpacks the bundled ``.gz`` files; the network is tried only for missing ones (``download``)."""
    raw = Path(data_dir) / "MNIST" / "raw"
    missing = []
    for name, md5 in MNIST_MD5.items():
        target, gz = raw / name, raw / f"{name}.gz"
        if target.is_file():
            if not _verified(target, md5):
                raise DataError(
                    f"MNIST file {target} is corrupt (md5 {calculate_md5(target)}, expected {md5}); "
                    "delete it"
                )
        elif gz.is_file():
            _decompress(gz, target, md5)
        else:
            missing.append(f"{name}.gz")
    if missing:
        if download:
            try:
                MNIST(str(data_dir), train=True, download=True)
                MNIST(str(data_dir), train=False, download=True)
                return raw
            except Exception as e:  # network errors come in many types
                reason = f"download failed ({type(e).__name__}: {e})"
        else:
            reason = "download disabled (data.download=false)"
        raise DataError(
            f"MNIST raw files not found: {', '.join(missing)} missing in {raw}; {reason}. "
            f"Put the four canonical files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in {raw}, "
            f"or set data.download=true on a machine with internet access."
        )
    return raw


class MNISTDataModule(ImageDataModule):
    """MNIST: 60k train (seeded train/val split) and the official 10k test set.

    ``test_size``: only the first test images (quick evals); ``download``: fetch missing files."""

    default_mean = (0.1307,)
    default_std = (0.3081,)

    def __init__(
        self,
        data_dir: str = "data",
        val_size: int = 5000,
        split_seed: int = 12345,
        download: bool = False,
        test_size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.val_size = int(val_size)
        self.split_seed = int(split_seed)
        self.download = bool(download)
        self.test_size = None if test_size is None else int(test_size)

    def prepare_data(self) -> None:
        ensure_mnist_raw(self.data_dir, self.download)

    def fingerprint(self, split: str) -> str:
        # The raw files are verified against fixed md5s; only the split can vary.
        base = f"mnist-canonical/{split}/val{self.val_size}/seed{self.split_seed}"
        return base + (f"/first{self.test_size}" if split == "test" and self.test_size else "")

    def load_splits(self) -> Splits:
        ensure_mnist_raw(self.data_dir, self.download)
        train = MNIST(self.data_dir, train=True, download=False)
        test = MNIST(self.data_dir, train=False, download=False)
        self.class_names = tuple(str(i) for i in range(10))
        full = TensorImageDataset(train.data.unsqueeze(1), train.targets)
        if not 0 < self.val_size < len(full):
            raise DataError(f"data.val_size={self.val_size} must be in [1, {len(full) - 1}]")
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.split_seed))
        n_test = len(test.data) if self.test_size is None else self.test_size
        if not 0 < n_test <= len(test.data):
            raise DataError(f"data.test_size={self.test_size} must be in [1, {len(test.data)}]")
        splits = Splits(
            train=full.subset(perm[self.val_size :]),
            test=TensorImageDataset(test.data[:n_test].unsqueeze(1), test.targets[:n_test]),
        )
        splits["val"] = full.subset(perm[: self.val_size])
        self._origin = {"train": perm[self.val_size :], "val": perm[: self.val_size]}
        return splits

    def checks_file(self) -> Path:
        """The canonical files (md5-verified), the split settings and sizes fix the checks' result
        (a subclass that takes other images keys its own file)."""
        sizes = "-".join(str(len(s)) for s in (self.splits or {}).values())
        key = f"{self.val_size}-{self.split_seed}-{self.test_size}-{sizes}"
        name = "" if type(self) is MNISTDataModule else f"{type(self).__name__}-"
        return Path(self.data_dir) / "MNIST" / f".checks-{name}{key}.json"

    def image_names(self, split: str, n: int) -> list[str]:
        """``MNIST-train/<i>`` / ``MNIST-test/<i>``: positions in the official files."""
        if split == "test":
            return [f"MNIST-test/{i}" for i in range(n)]
        return [f"MNIST-train/{i}" for i in self._origin[split].tolist()]
