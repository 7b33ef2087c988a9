"""Data checks: planted exact and near duplicates across splits are found and named; a clean
set raises no exact-duplicate alarm; ``leakage=error`` stops before training with one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.checks import CheckOptions, run_checks
from imgcls.data.dup_hash import Hashes, candidate_pairs, hamming, hash_images
from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.data.mnist_datamodule import ensure_mnist_raw
from imgcls.errors import DataError
from tests.conftest import MNIST_DATA, run_entry

SIZE = 48


def _digits(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """``n`` distinct MNIST digits as 48x48 RGB (tinted, so images differ in colour too)."""
    from torchvision.datasets import MNIST

    ensure_mnist_raw(MNIST_DATA)
    test = MNIST(str(MNIST_DATA), train=False)
    idx = torch.randperm(len(test.data), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = test.data[idx].numpy(), test.targets[idx].numpy()
    images = []
    for i, d in enumerate(x):
        im = Image.fromarray(d).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        tint = np.array([1.0, 0.6 + 0.4 * (i % 3) / 2, 0.8])
        images.append((np.array(im.convert("RGB")) * tint).astype(np.uint8))
    return images, [int(v) for v in y]


def _variant(img: np.ndarray, how: str) -> Image.Image:
    im = Image.fromarray(img)
    if how == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=70)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if how == "resize":
        return im.resize((96, 96), Image.Resampling.BILINEAR)
    if how == "crop":
        return im.crop((1, 1, SIZE - 1, SIZE - 1))
    return im


def make_planted(root: Path, plant: bool = True) -> dict[str, list[tuple[str, str]]]:
    """A folder set (train/val/test, 3 classes) with, when ``plant``, training images copied
    (exact), JPEG re-encoded, resized and cropped into val/test; returns what was planted."""
    images, labels = _digits(90)
    planted: dict[str, list[tuple[str, str]]] = {"exact": [], "near": []}
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        split = "train" if i < 60 else ("val" if i < 75 else "test")
        d = root / split / str(y % 3)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img{i}.png")
    if plant:
        for k, (how, split) in enumerate(
            [("copy", "val"), ("copy", "test"), ("jpeg", "val"), ("jpeg", "test"),
             ("resize", "test"), ("resize", "val"), ("crop", "test")]
        ):  # fmt: skip
            i = 3 * k
            name = f"{split}/{labels[i] % 3}/leak_{how}{i}.{'jpg' if how == 'jpeg' else 'png'}"
            _variant(images[i], how).save(root / name)
            planted["exact" if how == "copy" else "near"].append(
                (f"train/{labels[i] % 3}/img{i}.png", name)
            )
    return planted


def _folder(root: Path, **kw) -> FolderDataModule:
    opts = dict(root=str(root), image_size=[SIZE, SIZE], channels=3, cache_dir=None, num_workers=1)
    return FolderDataModule(**{**opts, **kw})


@pytest.mark.parametrize("loading", ["memory", "stream"])
def test_planted_duplicates_are_found_and_named(tmp_path: Path, loading: str) -> None:
    planted = make_planted(tmp_path)
    dm = _folder(tmp_path, loading=loading)
    dm.setup()
    report = dm.check_report
    assert report is not None
    found = {tuple(sorted(p)) for ps in report.examples().values() for p in ps}
    c = report.counts
    assert c["exact_across_splits"] == len(planted["exact"])
    assert c["exact_within_split"] == 0
    for a, b in planted["exact"]:
        assert tuple(sorted((a, b))) in found
    opts = CheckOptions(examples=50)
    all_pairs = {
        tuple(sorted(p)) for ps in run_checks(dm.split_hashes, opts).examples().values() for p in ps
    }
    near = [tuple(sorted(p)) for p in planted["near"]]
    hit = [p for p in near if p in all_pairs]
    # re-encoded and resized copies all; the 1-pixel crop of a 48-px image too, on this data
    assert len(hit) >= len(near) - 1, (near, all_pairs)
    assert c["near_across_splits"] <= len(near) + 1  # no false alarms among 90 distinct digits


def test_clean_set_has_no_exact_duplicates(tmp_path: Path) -> None:
    make_planted(tmp_path, plant=False)
    dm = _folder(tmp_path)
    dm.setup()
    assert dm.check_report is not None
    assert dm.check_report.counts["exact_across_splits"] == 0
    assert dm.check_report.counts["exact_within_split"] == 0
    assert dm.check_report.counts["label_conflicts"] == 0


def test_label_conflict_and_within_split_duplicate(tmp_path: Path) -> None:
    make_planted(tmp_path, plant=False)
    src = tmp_path / "train" / "0"
    first = sorted(src.iterdir())[0]
    (tmp_path / "train" / "1" / "same_as_class0.png").write_bytes(first.read_bytes())
    dm = _folder(tmp_path)
    dm.setup()
    c = dm.check_report.counts
    assert c["exact_within_split"] == 1 and c["label_conflicts"] == 1
    [pair] = dm.check_report.examples()["label_conflicts"]
    assert sorted(pair) == sorted([f"train/0/{first.name}", "train/1/same_as_class0.png"])


def test_leakage_error_stops_before_training(tmp_path: Path) -> None:
    make_planted(tmp_path / "data")
    with pytest.raises(DataError, match="leakage") as err:
        _folder(tmp_path / "data", checks={"leakage": "error"}).setup()
    assert "\n" not in str(err.value) and "leak_copy0.png" in str(err.value)
    out = tmp_path / "run"
    proc = run_entry(
        "train", "data=folder", f"data.root={tmp_path / 'data'}", "data.image_size=[48,48]",
        "data.checks.leakage=error", "model=mlp", "logger=none", "trainer.max_epochs=1",
        f"hydra.run.dir={out}", timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "leakage" in lines[0] and "leak_copy0.png" in lines[0]
    assert not list(out.rglob("*.ckpt"))


@pytest.mark.slow
def test_warn_reports_in_metrics_json_and_picture(tmp_path: Path) -> None:
    make_planted(tmp_path / "data")
    out = tmp_path / "run"
    proc = run_entry(
        "train", "data=folder", f"data.root={tmp_path / 'data'}", "data.image_size=[48,48]",
        "model=mlp", "logger=tensorboard", "+trainer.fast_dev_run=1", "test=false",
        f"hydra.run.dir={out}", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads((out / "metrics.json").read_text())["data_checks"]
    assert checks["exact_across_splits"] == 2
    assert any("leak_copy0.png" in " ".join(p) for p in checks["examples"]["exact_across_splits"])
    assert (out / "data_checks.png").stat().st_size > 1000


def test_multi_index_finds_all_pairs_within_three_bits() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**62), 2**62, (3000,), generator=g)
    flips = torch.randint(0, 64, (3000, 3), generator=g)
    b = a.clone()
    for k in range(3):
        b ^= torch.bitwise_left_shift(torch.ones_like(b), flips[:, k])
    pairs = candidate_pairs(a, b, 3)
    diag = pairs[pairs[:, 0] == pairs[:, 1]]
    assert len(diag) == 3000 and (hamming(a[pairs[:, 0]], b[pairs[:, 1]]) <= 3).all()


def test_hashes_of_identical_pixels_match() -> None:
    x = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    x[3] = x[0]
    h: Hashes = hash_images(x)
    assert h.exact[0] == h.exact[3] and len(set(h.exact.tolist())) == 3


def test_shards_check_the_hashes_written_beside_them(tmp_path: Path) -> None:
    """make_shards.py stores the stream path's hashes; data=shards checks them without a decode."""
    pytest.importorskip("litdata")
    import make_shards

    from imgcls.data.shards_datamodule import ShardsDataModule

    planted = make_planted(tmp_path / "data")
    out = tmp_path / "shards"
    args = [
        "data=folder",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=[48,48]",
        "data.channels=3",
    ]
    assert make_shards.main(["--out", str(out), "--no-verify", *args]) == 0
    assert (out / "hashes.pt").is_file()
    dm = ShardsDataModule(root=str(out), num_workers=0)
    dm.setup()
    assert dm.check_report is not None
    assert dm.check_report.counts["exact_across_splits"] == len(planted["exact"])
    with pytest.raises(DataError, match="leakage"):
        ShardsDataModule(root=str(out), num_workers=0, checks={"leakage": "error"}).setup()


@pytest.mark.slow
def test_the_shipped_mnist_report_is_what_the_checks_compute(tmp_path: Path) -> None:
    """The bundled MNIST ships its default split's report (the first ``make train`` would spend
    most of its set-up hashing 70,000 digits): a fresh computation must give the same file."""
    from imgcls.data.mnist_datamodule import MNISTDataModule

    shipped = sorted((MNIST_DATA / "MNIST").glob(".checks-5000-12345-None-*.json"))
    assert len(shipped) == 1, "data/MNIST/ ships the default split's checks report"
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "raw").symlink_to((MNIST_DATA / "MNIST" / "raw").resolve())
    dm = MNISTDataModule(data_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    assert dm.checks_file().name == shipped[0].name
    assert json.loads(dm.checks_file().read_text()) == json.loads(shipped[0].read_text())
