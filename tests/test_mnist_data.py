"""The bundled MNIST: verified decompression, the seeded split, batches, and the missing-files error."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST

from imgcls.data.mnist_datamodule import MNIST_MD5, MNISTDataModule, ensure_mnist_raw
from imgcls.errors import DataError
from tests.conftest import MNIST_DATA, run_entry


def copy_gz(dst: Path) -> Path:
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        shutil.copy(MNIST_DATA / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    return raw


def test_bundled_files_decompress_to_canonical_content(tmp_path) -> None:
    raw = copy_gz(tmp_path)
    assert ensure_mnist_raw(tmp_path) == raw
    for name in MNIST_MD5:
        assert (raw / name).is_file()
    assert not list(raw.glob("*.tmp"))


def test_corrupt_archive_is_named(tmp_path, monkeypatch) -> None:
    raw = copy_gz(tmp_path)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not mnist")
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda a, b: (replaced.append(Path(b).name), real_replace(a, b))
    )
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz does not hold the canonical"):
        ensure_mnist_raw(tmp_path)
    # checked before the replace: a kill at any moment cannot leave the wrong file in place
    assert "t10k-labels-idx1-ubyte" not in replaced
    assert not (raw / "t10k-labels-idx1-ubyte").exists() and not list(raw.glob(".*.tmp"))


def test_missing_files_say_where_to_put_them(tmp_path) -> None:
    with pytest.raises(DataError) as e:
        ensure_mnist_raw(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "data.download=true" in msg


def test_missing_files_stop_train_with_one_message(tmp_path) -> None:
    proc = run_entry(
        "train",
        f"paths.data_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
        "extras.print_config=false",
    )
    assert proc.returncode == 1
    assert "error: MNIST raw files not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_split_sizes_seeded_and_disjoint(mnist_dm) -> None:
    s = mnist_dm.splits
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (55000, 5000, 10000)
    spec = mnist_dm.spec
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (10, 1, (28, 28))
    assert spec.class_names == tuple("0123456789")
    # same seed, same split; the split is a partition of the 60k training images
    other = MNISTDataModule(data_dir=str(MNIST_DATA))
    other.setup()
    assert torch.equal(other.splits["val"].images, s["val"].images)
    assert torch.equal(other.splits["val"].targets, s["val"].targets)
    # train + val hold each of the 60k training images exactly once (a key per image: pixels
    # projected on a random vector, exact in float64 for uint8 pixels and the same row order)
    direction = torch.rand(28 * 28, dtype=torch.float64)

    def keys(images: torch.Tensor) -> torch.Tensor:
        return torch.sort(images.flatten(1).double() @ direction).values

    full = MNIST(str(MNIST_DATA), train=True, download=False).data
    pooled = torch.cat([s["train"].images, s["val"].images])
    assert torch.equal(keys(pooled), keys(full))
    counts = torch.bincount(torch.cat([s["train"].targets, s["val"].targets]), minlength=10)
    assert counts.min() > 5000  # every digit present in quantity


def test_different_split_seed_changes_validation_set() -> None:
    a = MNISTDataModule(data_dir=str(MNIST_DATA), split_seed=1)
    a.setup()
    b = MNISTDataModule(data_dir=str(MNIST_DATA), split_seed=2)
    b.setup()
    assert not torch.equal(a.splits["val"].targets, b.splits["val"].targets)


def test_loader_serves_whole_uint8_batches_and_normalizes_on_transfer(mnist_dm) -> None:
    batch = next(iter(mnist_dm.train_dataloader()))
    x, y = batch
    assert x.dtype == torch.uint8 and x.shape == (128, 1, 28, 28) and y.shape == (128,)
    xn, yn = mnist_dm.on_after_batch_transfer(batch, 0)
    assert xn.dtype == torch.float32 and torch.equal(yn, y)
    # MNIST normalization: the whole training set has mean ~0 and std ~1 afterwards
    from imgcls.data.transforms import normalize

    allx = normalize(mnist_dm.splits["train"].images, mnist_dm.spec.mean, mnist_dm.spec.std)
    assert abs(float(allx.mean())) < 0.01 and abs(float(allx.std()) - 1) < 0.01
    # eval loaders keep order and cover every test image exactly once
    ys = torch.cat([b[1] for b in mnist_dm.test_dataloader()])
    assert torch.equal(ys, mnist_dm.splits["test"].targets)


def test_a_raw_file_changed_after_verification_is_caught(tmp_path) -> None:
    raw = copy_gz(tmp_path)
    ensure_mnist_raw(tmp_path)  # decompresses, verifies, remembers (size, mtime) per file
    ensure_mnist_raw(tmp_path)  # unchanged files: no re-hash, no error
    target = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, new content and mtime
    before = target.stat()
    target.write_bytes(bytes(data))
    # a coarse file-system clock must not hide the change
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is corrupt"):
        ensure_mnist_raw(tmp_path)
