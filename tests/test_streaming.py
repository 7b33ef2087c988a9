"""The stream path (``data.loading=stream|auto``): it learns, validates, and records its eval transform.

Fast tests on a small generated digits folder set; the parity with the memory path on the
full set is in ``test_streaming_slow.py``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.data.spec import DataSpec
from imgcls.engine.streaming.loader import StreamImageDataset, StreamItem, eval_decoder
from imgcls.errors import DataError
from imgcls.tasks.predict_inputs import ImageFiles, list_inputs
from imgcls.tasks.train import train
from tests.conftest import compose_config, make_digits, run_entry, tiny

# every batch of the small set (epochs: each test's), no callbacks, no test
EVERY_BATCH = {"epochs": None, "train_batches": None, "val_batches": None, "test_batches": None}
FAST = tiny("test=false", "data.cache_dir=null", **EVERY_BATCH, callbacks="none")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory, train=1200, test=300)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_stream_path_learns_and_records_its_eval_transform(digits: Path, tmp_path: Path) -> None:
    """Smoke test of the whole stream path: workers decode, the model learns, the checkpoint
    records the eval transform and predict's preprocessing gives the same pixels as eval."""
    cfg = compose_config(
        "train",
        [
            "data=folder",
            f"data.root={digits}",
            "data.image_size=[28,28]",  # the digits are mixed-size
            "data.loading=stream",
            "data.stream.eval_resize=32",  # shorter side to 32, then center-crop 28x28
            "data.stream.train_crop=random_resized_crop",
            "data.stream.scale=[0.7,1.0]",
            "model=lenet",
            "trainer.max_epochs=3",
            *tiny("test=false", "data.cache_dir=null", **EVERY_BATCH, callbacks="model_checkpoint"),
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert metrics["val/acc_best"] >= 0.75, metrics

    ckpt = next(tmp_path.rglob("*.ckpt"))
    blob = torch.load(ckpt, map_location="cpu", weights_only=False)
    spec = DataSpec.from_dict(blob["hyper_parameters"]["spec"])
    assert spec.eval_transform == {
        "resize": 32,
        "crop": [28, 28],
        "interpolation": "bilinear",
        "antialias": True,
    }
    # predict decodes like the stream path's validation split: same pixels, bit for bit
    dm = FolderDataModule(
        root=str(digits),
        image_size=[28, 28],
        loading="stream",
        stream={"eval_resize": 32},
        num_workers=0,
    )
    dm.setup()
    val = dm.splits["val"]
    assert val.images.shape[1:] == (3, 28, 28)  # the eval transform is fixed: decoded once
    inputs = list_inputs(str(digits / "valid"))
    files = ImageFiles(inputs.items[:8], spec)
    images, _, errors = files.__getitems__(list(range(8)))
    assert errors == [""] * 8
    by_path = {str(e.path): i for i, e in enumerate(dm.entries["val"])}
    for slot, item in enumerate(inputs.items[:8]):
        expected = val[by_path[str(item.path)]][0]
        assert torch.equal(images[slot], expected), item.path


def test_auto_picks_stream_when_the_budget_is_small(digits: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    small = FolderDataModule(
        root=str(digits), image_size=[28, 28], loading="auto", memory_budget_mb=1, num_workers=0
    )
    small.setup()
    assert small.loading_used == "stream"
    assert (
        "data.loading=auto chose stream" in caplog.text
        and "over data.memory_budget_mb=1" in caplog.text
    )
    assert not hasattr(small.splits["train"], "images")  # nothing decoded up front

    caplog.clear()
    big = FolderDataModule(
        root=str(digits), image_size=[28, 28], loading="auto", memory_budget_mb=64, num_workers=0
    )
    big.setup()
    assert big.loading_used == "memory"
    assert (
        "data.loading=auto chose memory" in caplog.text
        and "within data.memory_budget_mb=64" in caplog.text
    )
    # 1500 files x 3 x 28 x 28 uint8 = 3.4 MB
    assert "3.4 MB (1500 images x 3x28x28 uint8)" in caplog.text


def test_prepass_names_a_file_that_is_no_image(digits: Path, tmp_path: Path) -> None:
    root = _copy(digits, tmp_path / "d")
    bad = next((root / "train" / "3").iterdir())
    bad.write_bytes(b"not an image at all")
    dm = FolderDataModule(root=str(root), image_size=[28, 28], loading="stream", num_workers=0)
    with pytest.raises(DataError, match=rf"cannot decode image .*{bad.name}"):
        dm.setup()


def _truncate(root: Path) -> Path:
    """A file whose header reads (the pre-pass accepts it) but whose pixels are cut short."""
    bad = sorted((root / "train" / "5").glob("*.png"))[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return bad


def test_decode_error_mid_epoch_stops_naming_the_file(digits: Path, tmp_path: Path) -> None:
    root = _copy(digits, tmp_path / "d")
    bad = _truncate(root)
    r = run_entry(
        "train",
        "data=folder",
        f"data.root={root}",
        "data.image_size=[28,28]",
        "data.loading=stream",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}/logs",
        "extras.print_config=false",
        *FAST,
    )
    assert r.returncode != 0
    assert f"cannot decode image {bad}" in r.stderr, r.stderr[-2000:]
    assert "train/5/" in r.stderr and "data.on_decode_error=skip" in r.stderr
    assert "Traceback" not in r.stderr


def test_decode_error_mid_epoch_is_skipped_and_counted(
    digits: Path, tmp_path: Path, caplog
) -> None:
    root = _copy(digits, tmp_path / "d")
    bad = _truncate(root)
    cfg = compose_config(
        "train",
        [
            "data=folder",
            f"data.root={root}",
            "data.image_size=[28,28]",
            "data.loading=stream",
            "data.on_decode_error=skip",
            "trainer.max_epochs=1",
            *FAST,
        ],
        tmp_path,
    )
    caplog.set_level(logging.WARNING)
    metrics = train(cfg)
    assert metrics["train/loss_epoch"] > 0
    skipped = [
        r.getMessage() for r in caplog.records if "skipped an unreadable image" in r.getMessage()
    ]
    # seen once per epoch: the 1st epoch skips it once (the file is in the train split)
    assert len(skipped) == 1 and str(bad) in skipped[0] and "(1 so far)" in skipped[0], skipped


def test_the_val_split_is_decoded_once_when_it_fits_the_budget(digits: Path) -> None:
    """Within data.memory_budget_mb the val split is held decoded (what the stream decode gives,
    bit for bit); over it, the val split streams like the others."""
    kept = FolderDataModule(root=str(digits), image_size=[28, 28], loading="stream", num_workers=0)
    kept.setup()
    val = kept.splits["val"]
    streamed = StreamImageDataset(
        [StreamItem(e.path, 0, e.where) for e in kept.entries["val"]],
        eval_decoder(kept.stream_info["eval_transform"], 3),
    )
    assert torch.equal(val.images[5], streamed[5][0]) and torch.equal(
        val.images[-1], streamed[-1][0]
    )
    budget = 0.5 * len(val) * 3 * 28 * 28 / 2**20  # half of what the val split needs
    small = FolderDataModule(
        root=str(digits), image_size=[28, 28], loading="stream", memory_budget_mb=budget,
        num_workers=0,
    )  # fmt: skip
    small.setup()
    assert isinstance(small.splits["val"], StreamImageDataset)
    assert torch.equal(small.splits["val"].targets, val.targets)


def test_a_val_file_that_fails_at_set_up_stops_before_training(
    digits: Path, tmp_path: Path
) -> None:
    root = _copy(digits, tmp_path / "d")
    bad = sorted((root / "valid" / "4").glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:60])  # the header reads, the pixels do not
    dm = FolderDataModule(root=str(root), image_size=[28, 28], loading="stream", num_workers=0)
    with pytest.raises(DataError, match=rf"cannot decode image .*{bad.name}.*on_decode_error=skip"):
        dm.setup()
    skip = FolderDataModule(
        root=str(root), image_size=[28, 28], loading="stream", on_decode_error="skip", num_workers=0
    )
    skip.setup()  # the val split streams: the bad file is skipped (and counted) per epoch
    assert isinstance(skip.splits["val"], StreamImageDataset)
