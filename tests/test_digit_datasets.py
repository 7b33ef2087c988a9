"""Real data through the file sources: the MNIST-derived CSV and folder datasets train LeNet.

The default suite trains on small versions (1500 images, 3 epochs) with a lower floor; the
``slow`` tests run the user's commands on the full generated sets (5000 images) and check the
issue's floors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import make_digit_datasets
import pytest
from PIL import Image

from imgcls.tasks.train import train
from tests.conftest import compose_config, run_entry, tiny


def form_overrides(root: Path, form: str) -> list[str]:
    """The command-line overrides a user types for each generated form (README)."""
    if form == "csv":
        return ["data=csv", f"data.root={root}/digits_csv"]
    if form == "jpg":
        return [
            "data=csv",
            f"data.root={root}/digits_jpg",
            "data.train_csv=labels.csv",
            "data.image_dir=images",
            "data.extension=.JPG",
            "data.test_csv=null",
            "data.resize_factor=8",
        ]
    # mixed sizes: outside the default data/digits_folder the size is the user's to give
    return [
        "data=folder",
        f"data.root={root}/digits_folder",
        "data.channels=1",
        "data.image_size=[28,28]",
    ]


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert make_digit_datasets.main(["--out", str(out), "--train", "1500", "--test", "300"]) == 0
    return out


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_generated_layouts(small_digits: Path) -> None:
    d = small_digits / "digits_csv"
    train_rows = read_rows(d / "train.csv")
    test_rows = read_rows(d / "test.csv")
    truth = read_rows(d / "test_truth.csv")
    assert train_rows[0] == ["id", "label"] and len(train_rows) == 1501
    assert test_rows[0] == ["id"] and len(test_rows) == 301
    assert [r[0] for r in truth] == [r[0] for r in test_rows] and truth[0] == ["id", "label"]
    assert all((d / "train" / f"{r[0]}.png").is_file() for r in train_rows[1:])
    assert all((d / "test" / f"{r[0]}.png").is_file() for r in test_rows[1:])

    j = small_digits / "digits_jpg"
    rows = read_rows(j / "labels.csv")
    assert rows[0] == ["Image_Name", "Lable"] and "." not in rows[1][0]
    with Image.open(j / "images" / f"{rows[1][0]}.JPG") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "L", (224, 224))

    f = small_digits / "digits_folder"
    assert sorted(p.name for p in (f / "train").iterdir()) == [str(i) for i in range(10)]
    files = sorted((f / "valid").rglob("*.*"))
    assert len(files) == 300 and {p.suffix for p in files} == {".png", ".jpg"}
    sizes = set()
    for p in files[:40]:
        with Image.open(p) as im:
            assert im.mode == "RGB"
            sizes.add(im.size)
    assert len(sizes) > 5  # mixed sizes


def test_generation_is_deterministic(small_digits: Path, tmp_path: Path) -> None:
    assert (
        make_digit_datasets.main(
            ["--out", str(tmp_path), "--train", "1500", "--test", "300", "--forms", "csv"]
        )
        == 0
    )
    a, b = small_digits / "digits_csv", tmp_path / "digits_csv"
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()
    assert (a / "train" / "17.png").read_bytes() == (b / "train" / "17.png").read_bytes()


@pytest.mark.parametrize("form", ["csv", "jpg", "folder"])
def test_lenet_learns_each_form_small(small_digits: Path, tmp_path: Path, form: str) -> None:
    # every batch of the small set, 3 epochs: the floor below is measured on that
    fast = tiny(
        "+trainer.enable_checkpointing=false",
        "test=false",
        "data.cache_dir=null",
        epochs=3,
        train_batches=None,
        val_batches=None,
        test_batches=None,
        callbacks="none",
    )
    cfg = compose_config("train", [*form_overrides(small_digits, form), *fast], tmp_path)
    metrics = train(cfg)
    assert metrics["val/acc_best"] >= 0.80, metrics


# -- the floors, through the entry point -------------------------------------------------
@pytest.fixture(scope="module")
def full_digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits_full")
    assert make_digit_datasets.main(["--out", str(out)]) == 0  # defaults: 5000 train, 1000 test
    return out


def _train_cli(tmp_path: Path, *overrides: str) -> dict[str, float]:
    r = run_entry(
        "train",
        *overrides,
        f"paths.log_dir={tmp_path}/",
        "logger=csv",
        "extras.print_config=false",
        f"data.cache_dir={tmp_path}/cache",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = tmp_path.glob("train/runs/*/metrics.json")
    metrics = json.loads(summary.read_text())["metrics"]
    print({k: round(v, 4) for k, v in metrics.items() if "acc" in k})  # shown by pytest -rP
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("form", ["csv", "jpg", "folder"])
def test_lenet_reaches_95_percent_on_each_form(
    full_digits: Path, tmp_path: Path, form: str
) -> None:
    metrics = _train_cli(
        tmp_path, *form_overrides(full_digits, form), "model=lenet", "trainer.max_epochs=5"
    )
    assert metrics["val/acc_best"] >= 0.95, metrics


@pytest.mark.slow
def test_lenet_on_rgb_folder_with_three_channels(full_digits: Path, tmp_path: Path) -> None:
    overrides = [
        o for o in form_overrides(full_digits, "folder") if not o.startswith("data.channels")
    ]
    metrics = _train_cli(tmp_path, *overrides, "model=lenet", "trainer.max_epochs=5")
    assert metrics["val/acc_best"] >= 0.95, metrics


@pytest.mark.slow
def test_seed_cnn_recipe_on_image_name_lable_jpg(full_digits: Path, tmp_path: Path) -> None:
    """The seed CNN (4+4 filters, BN, Adam) on grayscale JPEGs shrunk 8x, via its experiment config."""
    metrics = _train_cli(
        tmp_path, "experiment=digits_jpg_simple_cnn", f"paths.data_dir={full_digits}"
    )
    assert metrics["val/acc_best"] >= 0.93, metrics
