"""CSV and folder sources: layouts, labels, splits, caching, and one clear error per bad input."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.builder import build_datamodule
from imgcls.data.csv_datamodule import CSVDataModule, read_image_csv
from imgcls.data.decode import decode_images
from imgcls.data.file_checks import sort_class_names
from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.data.images import load_image, resolve_under
from imgcls.data.splits import stratified_split
from imgcls.data.transforms import BatchRandomAffine
from imgcls.errors import DataError
from tests.conftest import run_entry


# -- tiny datasets written by the tests ---------------------------------------------------------
def save_image(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> Path:
    """A flat image whose pixel value identifies it (size is (height, width))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    arr = np.full((h, w, 3) if mode == "RGB" else (h, w), value, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def csv_dataset(root: Path, labels: list[object], ext: str = ".png") -> Path:
    """``train.csv`` (id,label) with ``train/<id><ext>``; image i has pixel value 10 * i."""
    for i in range(len(labels)):
        save_image(root / "train" / f"{i}{ext}", 10 * i)
    write_csv(root / "train.csv", ["id", "label"], [[i, y] for i, y in enumerate(labels)])
    return root


def csv_module(root: Path, **kw) -> CSVDataModule:
    opts = dict(
        root=str(root), train_csv="train.csv", image_dir="train", cache_dir=None, num_workers=1
    )
    return CSVDataModule(**{**opts, **kw})


def setup_error(dm) -> str:
    with pytest.raises(DataError) as e:
        dm.setup()
    return str(e.value)


LABELS = [0, 1, 2] * 4


# -- layouts and labels -------------------------------------------------------------------------
def test_id_label_csv_with_label_less_test_csv_becomes_predict_split(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    ids = [57, 3, 12]  # not sorted: predictions must come back in this row order
    for k, i in enumerate(ids):
        save_image(root / "test" / f"{i}.png", 200 + k)
    write_csv(root / "test.csv", ["id"], [[i] for i in ids])
    dm = csv_module(root, test_csv="test.csv", test_image_dir="test")
    dm.setup()
    assert dm.predict_names == ["57", "3", "12"]
    assert [p.name for p in dm.predict_files] == ["57.png", "3.png", "12.png"]
    ((x, y),) = list(dm.predict_dataloader())
    assert x[:, 0, 0, 0].tolist() == [200, 201, 202]
    assert y.tolist() == [-1, -1, -1]
    assert dm.spec.class_names == ("0", "1", "2")
    assert dm.spec.in_channels == 1 and dm.spec.image_size == (12, 10)


def test_image_name_lable_form_with_case_sensitive_extension(tmp_path: Path) -> None:
    for i in range(6):
        save_image(tmp_path / f"IMG_{i}.JPG", 30 * i, size=(80, 64))
    write_csv(
        tmp_path / "labels.csv", ["Image_Name", "Lable"], [[f"IMG_{i}", i % 2] for i in range(6)]
    )
    dm = CSVDataModule(
        root=str(tmp_path),
        train_csv="labels.csv",
        image_dir=".",
        extension=".JPG",
        resize_factor=8,
        cache_dir=None,
        val_fraction=0.34,
    )
    dm.setup()
    assert dm.spec.image_size == (10, 8)  # the seed's h // 8, w // 8
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 6

    wrong = CSVDataModule(
        root=str(tmp_path), train_csv="labels.csv", image_dir=".", extension=".jpg", cache_dir=None
    )
    msg = setup_error(wrong)
    assert "labels.csv row 1 (line 2), column 'Image_Name': image file not found" in msg
    assert "IMG_0.jpg" in msg and "found IMG_0.JPG" in msg and "case-sensitive" in msg


def test_extension_found_by_stem_and_ambiguous_stem_is_an_error(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 1)
    save_image(tmp_path / "b.jpeg", 2)
    listing = read_image_csv(
        write_csv(tmp_path / "l.csv", ["file", "class"], [["a", "x"], ["b", "y"]]), tmp_path
    )
    assert [e.path.name for e in listing.entries] == ["a.png", "b.jpeg"]
    assert (listing.image_column, listing.label_column) == ("file", "class")

    save_image(tmp_path / "a.jpg", 3)
    with pytest.raises(
        DataError,
        match=r"l.csv row 1 \(line 2\), column 'file'.*'a' matches several image files.*a.jpg, a.png",
    ):
        read_image_csv(tmp_path / "l.csv", tmp_path)


def test_string_labels_sorted_and_int_labels_sorted_numerically(tmp_path: Path) -> None:
    assert sort_class_names(["10", "2", "1"]) == ("1", "2", "10")
    assert sort_class_names(["daisy", "Rose", "2"]) == ("2", "Rose", "daisy")
    root = csv_dataset(tmp_path, ["tulip", "daisy", "rose"] * 3)
    dm = csv_module(root)
    dm.setup()
    assert dm.spec.class_names == ("daisy", "rose", "tulip")
    assert dm.spec.num_classes == 3
    # every image keeps its own label: image i (pixel 10 i) has label LABELS[i]
    for split in ("train", "val"):
        ds = dm.splits[split]
        for x, y in zip(ds.images, ds.targets, strict=True):
            i = int(x[0, 0, 0]) // 10
            assert dm.spec.class_names[int(y)] == ["tulip", "daisy", "rose"][i % 3]


def test_stratified_split_is_seeded_and_keeps_class_proportions() -> None:
    labels = [0] * 10 + [1] * 10 + [2] * 5
    tr, va = stratified_split(labels, 0.2, seed=1)
    assert sorted(tr + va) == list(range(25))
    assert [sum(labels[i] == c for i in va) for c in range(3)] == [2, 2, 1]
    assert stratified_split(labels, 0.2, seed=1) == (tr, va)
    assert stratified_split(labels, 0.2, seed=2)[1] != va


def test_explicit_val_csv_and_labeled_test_csv(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    for i in range(3):
        save_image(root / "val" / f"v{i}.png", 100 + i)
        save_image(root / "test" / f"t{i}.png", 150 + i)
    write_csv(root / "val.csv", ["id", "label"], [[f"v{i}", i] for i in range(3)])
    write_csv(root / "test.csv", ["id", "label"], [[f"t{i}", i] for i in range(3)])
    dm = csv_module(
        root, val_csv="val.csv", val_image_dir="val", test_csv="test.csv", test_image_dir="test"
    )
    dm.setup()
    assert len(dm.splits["train"]) == len(LABELS)
    assert dm.splits["val"].images[:, 0, 0, 0].tolist() == [100, 101, 102]
    assert dm.splits["test"].targets.tolist() == [0, 1, 2]
    assert "predict" not in dm.splits


def test_folder_layout_rgb_into_one_channel_and_loose_test_images_predict(tmp_path: Path) -> None:
    for c, v in (("cat", 50), ("dog", 150)):
        for i in range(3):
            save_image(tmp_path / "train" / c / f"{i}.png", v, size=(20 + i, 16), mode="RGB")
        save_image(tmp_path / "val" / c / "x.jpg", v, size=(30, 30), mode="RGB")
    save_image(tmp_path / "test" / "b.png", 9, mode="RGB")
    save_image(tmp_path / "test" / "a.png", 9, mode="RGB")
    dm = FolderDataModule(root=str(tmp_path), image_size=[8, 8], channels=1, cache_dir=None)
    dm.setup()
    assert dm.spec.in_channels == 1 and dm.spec.image_size == (8, 8)
    assert dm.spec.class_names == ("cat", "dog")
    assert len(dm.splits["train"]) == 6 and len(dm.splits["val"]) == 2
    assert dm.predict_names == ["a.png", "b.png"]
    rgb = FolderDataModule(root=str(tmp_path), image_size=[8, 8], cache_dir=None)
    rgb.setup()
    assert rgb.spec.in_channels == 3


def test_disk_cache_reloads_and_refreshes_when_a_file_changes(tmp_path: Path, caplog) -> None:
    root = csv_dataset(tmp_path / "d", LABELS)
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="imgcls")
    first = csv_module(root, cache_dir=str(cache))
    first.setup()
    assert "decoding 12 images once into on-disk cache" in caplog.text
    assert len(list(cache.glob("*.u8"))) == 1
    caplog.clear()
    second = csv_module(root, cache_dir=str(cache))
    second.setup()
    assert "decode cache: loaded 12 decoded images" in caplog.text
    for split in ("train", "val"):
        assert torch.equal(first.splits[split].images, second.splits[split].images)
        assert first.fingerprint(split) == second.fingerprint(split)
    # rewrite one image: the key (size/mtime) changes, so it is decoded afresh
    p = root / "train" / "0.png"
    save_image(p, 77)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    caplog.clear()
    third = csv_module(root, cache_dir=str(cache))
    third.setup()
    assert "decoding 12 images once" in caplog.text
    pixels = torch.cat([third.splits["train"].images, third.splits["val"].images])[
        :, 0, 0, 0
    ].tolist()
    assert 77 in pixels and 0 not in pixels
    # only the split holding that image has a new fingerprint
    in_train = 0 in first.splits["train"].images[:, 0, 0, 0].tolist()
    changed = [s for s in ("train", "val") if third.fingerprint(s) != first.fingerprint(s)]
    assert changed == (["train"] if in_train else ["val"])


def test_decode_images_reports_bad_files_without_stopping(tmp_path: Path) -> None:
    good = save_image(tmp_path / "g.png", 5)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    images, errors = decode_images([good, bad, tmp_path / "none.png"], channels=1, size=(4, 4))
    assert images.shape == (3, 1, 4, 4) and images[0].max() == 5
    assert errors[0] is None
    assert "cannot decode image" in errors[1] and "b.png" in errors[1]
    assert "image file not found" in errors[2] and "none.png" in errors[2]
    assert load_image(good, size=(4, 6)).shape == (1, 4, 6)
    # without a size, every image must share the first readable one's
    odd = save_image(tmp_path / "odd.png", 9, size=(6, 6))
    images, errors = decode_images([bad, good, odd], channels=1)
    assert images.shape == (3, 1, 12, 10) and errors[1] is None
    assert "differs in size: 6x6 where" in errors[2] and "g.png gives 12x10" in errors[2]


# -- bad input: one DataError naming the file, row and column --------------------------------
def test_missing_image_names_row_column_and_file(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    (root / "train" / "4.png").unlink()
    msg = setup_error(csv_module(root))
    assert msg.startswith("train.csv row 5 (line 6), column 'id': image file not found:")
    assert f"{root / 'train' / '4'} (nor any 4.<image extension>)" in msg


def test_corrupt_and_truncated_images_are_reported_before_training(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    (root / "train" / "2.png").write_bytes(b"\x89PNG garbage")
    jpg = save_image(root / "train" / "7.jpg", 100, size=(64, 64), mode="RGB")
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # truncated: the header is intact
    rows = [[i if i != 7 else "7.jpg", y] for i, y in enumerate(LABELS)]
    write_csv(root / "train.csv", ["id", "label"], rows)
    msg = setup_error(csv_module(root, image_size=[12, 10]))
    assert msg.startswith("2 problems in CSV dataset")
    assert (
        f"train.csv row 3 (line 4), column 'id': cannot decode image {root / 'train' / '2.png'}"
        in msg
    )
    assert f"train.csv row 8 (line 9), column 'id': cannot decode image {jpg}" in msg
    assert "truncated" in msg


def test_empty_label_cell(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    rows = [[i, "" if i == 3 else y] for i, y in enumerate(LABELS)]
    write_csv(root / "train.csv", ["id", "label"], rows)
    msg = setup_error(csv_module(root))
    assert msg.startswith("train.csv row 4 (line 5), column 'label': empty label cell (image '3')")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("../../etc/passwd", "escapes the image directory"),
        ("/etc/passwd", "must be relative to the image directory"),
        ("sub/../../train.csv", "escapes the image directory"),
    ],
)
def test_paths_escaping_the_image_directory_are_refused(
    tmp_path: Path, cell: str, expected: str
) -> None:
    root = csv_dataset(tmp_path, LABELS)
    rows = [[cell if i == 1 else i, y] for i, y in enumerate(LABELS)]
    write_csv(root / "train.csv", ["id", "label"], rows)
    msg = setup_error(csv_module(root))
    assert msg.startswith(f"train.csv row 2 (line 3), column 'id': image path {cell!r}")
    assert expected in msg
    with pytest.raises(DataError):
        resolve_under(tmp_path, cell)


def test_empty_csv_and_csv_without_rows(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    (root / "train.csv").write_text("")
    assert "train.csv is empty: expected a header line" in setup_error(csv_module(root))
    (root / "train.csv").write_text("id,label\n\n")
    assert "train.csv has a header (id,label) but no data rows" in setup_error(csv_module(root))


def test_missing_columns_list_the_columns_that_exist(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    write_csv(root / "train.csv", ["picture", "kind", "notes"], [[0, 0, ""]])
    msg = setup_error(csv_module(root))
    assert "no image column found" in msg and "its columns are: picture, kind, notes" in msg
    assert "data.image_column" in msg
    msg = setup_error(csv_module(root, image_column="picture"))
    assert "no label column found" in msg and "its columns are: picture, kind, notes" in msg
    msg = setup_error(csv_module(root, image_column="picture", label_column="Kind"))
    assert "has no column 'Kind' (data.label_column); its columns are: picture, kind, notes" in msg


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    (root / "train" / "1.png").unlink()
    rows = [[i, "" if i == 5 else y] for i, y in enumerate(LABELS)]
    rows[8][0] = "../x"
    write_csv(root / "train.csv", ["id", "label"], rows)
    noise = np.random.default_rng(0).integers(0, 255, (12, 10), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "10.png")
    png = (root / "train" / "10.png").read_bytes()
    (root / "train" / "10.png").write_bytes(
        png[: len(png) // 2]
    )  # header intact: only a full decode fails
    msg = setup_error(csv_module(root))
    assert msg.startswith("4 problems in CSV dataset")
    assert "row 2 (line 3), column 'id': image file not found" in msg
    assert "row 6 (line 7), column 'label': empty label cell" in msg
    assert "row 9 (line 10), column 'id': image path '../x' escapes" in msg
    assert f"row 11 (line 12), column 'id': cannot decode image {root / 'train' / '10.png'}" in msg


def test_val_label_unknown_to_training_is_named(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    save_image(root / "train" / "v.png", 1)
    write_csv(root / "val.csv", ["id", "label"], [["v", 7]])
    msg = setup_error(csv_module(root, val_csv="val.csv"))
    assert (
        "val.csv row 1 (line 2), column 'id': label '7' (val split) is not a class of the training data"
        in msg
    )


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path, LABELS)
    save_image(root / "train" / "3.png", 30, size=(20, 20))
    msg = setup_error(csv_module(root))
    assert "the images have 2 different sizes" in msg and "12x10 (11 images" in msg
    assert "20x20 (1 images" in msg and "set data.image_size=[height,width]" in msg
    # with the channels known, headers are not probed: the decode itself finds the odd one out
    msg = setup_error(csv_module(root, channels=1))
    assert "1 images differ in size (as stored) from 12x10 of" in msg
    assert str(root / "train" / "3.png") in msg and "set data.image_size=[height,width]" in msg
    dm = csv_module(root, image_size=[12, 10])
    dm.setup()
    assert dm.spec.image_size == (12, 10)


def test_folder_errors_no_images_missing_class_and_absent_dataset(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "a" / "notes.txt").write_text("x")
    msg = setup_error(FolderDataModule(root=str(tmp_path), cache_dir=None))
    assert f"folder dataset {tmp_path / 'train'} has no images" in msg and "<class>/<image>" in msg

    save_image(tmp_path / "train" / "a" / "1.png", 1)
    save_image(tmp_path / "train" / "b" / "1.png", 2)
    save_image(tmp_path / "valid" / "a" / "1.png", 1)
    save_image(tmp_path / "valid" / "zebra" / "1.png", 3)
    msg = setup_error(FolderDataModule(root=str(tmp_path), cache_dir=None))
    assert (
        f"valid/zebra: class 'zebra' of {tmp_path / 'valid'} has no folder in {tmp_path / 'train'}"
        in msg
    )

    msg = setup_error(
        FolderDataModule(
            root=str(tmp_path / "nowhere"),
            name="Oxford Flowers-102",
            missing_hint="Convert with scripts/convert_flowers.py",
            cache_dir=None,
        )
    )
    assert msg.startswith(f"Oxford Flowers-102 not found: {tmp_path / 'nowhere'} does not exist")
    assert "train/<class>/<image>" in msg and "valid/<class>/<image>" in msg
    assert msg.endswith("Convert with scripts/convert_flowers.py")


def test_failed_setup_leaves_no_cache_file(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "d", LABELS)
    (root / "train" / "2.png").write_bytes(b"broken")
    cache = tmp_path / "cache"
    setup_error(csv_module(root, cache_dir=str(cache)))
    assert not cache.exists() or not any(cache.iterdir())


# -- configs and the entry point ------------------------------------------------------------------
def test_flowers_config_is_the_seed_recipe(tmp_path: Path, make_cfg) -> None:
    for split in ("train", "valid"):
        for c in ("1", "2", "10"):
            save_image(
                tmp_path / "flowers" / split / c / "image_00001.jpg", 90, size=(50, 60), mode="RGB"
            )
    cfg = make_cfg("train", ["data=flowers", f"paths.data_dir={tmp_path}", "data.cache_dir=null"])
    dm = build_datamodule(cfg)
    spec = dm.spec
    assert spec.image_size == (224, 224) and spec.in_channels == 3
    assert spec.class_names == ("1", "2", "10")  # numeric order, not ImageFolder's "1, 10, 2"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert dm.batch_size == 32 and dm.num_workers == 4
    aug = dm.train_augment
    assert isinstance(aug, BatchRandomAffine)
    assert (aug.degrees, aug.shear, aug.scale, aug.hflip) == (0.0, 10.0, (0.8, 1.2), 0.5)
    assert dm.train_dataloader().num_workers == 0  # decoded already: batches come from memory

    empty = make_cfg("train", ["data=flowers", f"paths.data_dir={tmp_path / 'none'}"])
    with pytest.raises(DataError, match=r"Oxford Flowers-102 not found.*convert_flowers.py --src"):
        build_datamodule(empty)


def test_train_entry_point_stops_with_one_error_and_writes_nothing(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "d", LABELS)
    (root / "train" / "6.png").unlink()
    cache = tmp_path / "cache"
    logs = tmp_path / "logs"
    r = run_entry(
        "train",
        "data=csv",
        f"data.root={root}",
        "data.test_csv=null",
        f"data.cache_dir={cache}",
        f"paths.log_dir={logs}/",
        "logger=none",
        "extras.print_config=false",
    )
    assert r.returncode != 0
    assert "error: train.csv row 7 (line 8), column 'id': image file not found" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not list(logs.rglob("*.ckpt"))
    assert not cache.exists() or not any(cache.iterdir())


def test_unwritable_cache_dir_falls_back_to_memory(tmp_path: Path, caplog) -> None:
    root = csv_dataset(tmp_path / "d", LABELS)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    caplog.set_level(logging.INFO, logger="imgcls")
    dm = csv_module(root, cache_dir=str(blocker / "cache"))
    dm.setup()
    assert "cannot write the decode cache" in caplog.text and "decoding into memory" in caplog.text
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == len(LABELS)
