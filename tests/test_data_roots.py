"""A data root is input from someone else: symlinks out of it, symlink loops and control characters
in CSV cells are refused at set-up with one line naming the file (``imgcls.data.roots``)."""

from __future__ import annotations

import builtins
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from imgcls.builder import build_datamodule
from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.tasks.predict_inputs import list_csv
from tests.conftest import run_entry
from tests.test_file_sources import LABELS, csv_dataset, csv_module, save_image, setup_error


def outside_image(tmp_path: Path) -> Path:
    """A readable PNG outside every data root: a run must neither read nor change it."""
    return save_image(tmp_path / "outside" / "secret.png", 200)


def folder_dataset(root: Path, per_class: int = 4) -> Path:
    for c in range(3):
        for i in range(per_class):
            save_image(root / "train" / str(c) / f"{i}.png", 10 * c + i)
    return root


def folder_module(root: Path, **kw) -> FolderDataModule:
    opts = dict(root=str(root), cache_dir=None, num_workers=1, image_size=[12, 10])
    return FolderDataModule(**{**opts, **kw})


def train(tmp_path: Path, data: str, root: Path, *extra: str):
    """``src/train.py`` as a user runs it; returns the process and its logs folder."""
    logs = tmp_path / "logs"
    overrides = [
        f"data={data}",
        f"data.root={root}",
        "data.cache_dir=null",
        f"paths.log_dir={logs}",
    ]
    proc = run_entry("train", *overrides, "logger=none", "extras.print_config=false", *extra)
    return proc, logs


def assert_refused(proc, logs: Path, *expected: str) -> None:
    """One ``error:`` line holding ``expected``, no traceback, non-zero exit, no checkpoint."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert all(e in errors[0] for e in expected), errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(logs.rglob("*.ckpt"))


# -- symlinks out of the root -------------------------------------------------------------------
def test_csv_image_symlink_outside_root_is_refused_by_train(tmp_path: Path) -> None:
    secret = outside_image(tmp_path)
    before = secret.read_bytes()
    root = csv_dataset(tmp_path / "d", LABELS)
    link = root / "train" / "1.png"
    link.unlink()
    link.symlink_to(secret)
    proc, logs = train(tmp_path, "csv", root, "data.test_csv=null")
    assert_refused(
        proc, logs, "train.csv row 2 (line 3), column 'id'", f"{link} points to {secret}"
    )
    assert "data.allow_outside_root=true" in proc.stderr
    assert secret.read_bytes() == before


def test_folder_image_symlink_outside_root_is_refused_by_train(tmp_path: Path) -> None:
    secret = outside_image(tmp_path)
    root = folder_dataset(tmp_path / "d")
    (root / "train" / "1" / "x.png").symlink_to(secret)
    proc, logs = train(tmp_path, "folder", root, "data.image_size=[12,10]")
    assert_refused(proc, logs, "train/1/x.png", f"points to {secret}, outside the data root")


def test_class_folder_symlink_outside_root_is_refused(tmp_path: Path) -> None:
    outside_image(tmp_path)
    root = folder_dataset(tmp_path / "d")
    (root / "train" / "3").symlink_to(tmp_path / "outside", target_is_directory=True)
    msg = setup_error(folder_module(root))
    assert msg.startswith(f"train/3: {root}/train/3 points to {tmp_path}/outside, outside")
    assert "\n" not in msg
    # the split folder itself, and a CSV file, are checked as well
    (root / "valid").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert "valid points to" in setup_error(folder_module(root))


def test_nothing_outside_the_root_is_opened(tmp_path: Path, monkeypatch) -> None:
    secret = outside_image(tmp_path)
    root = csv_dataset(tmp_path / "d", LABELS)
    (root / "train" / "2.png").unlink()
    (root / "train" / "2.png").symlink_to(secret)
    (root / "train.csv").rename(root / "real.csv")
    opened: list[str] = []
    real_open, real_image_open = builtins.open, Image.open

    def spy(opener):
        def wrapped(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                opened.append(os.path.realpath(file))
            return opener(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(Image, "open", spy(real_image_open))
    assert "points to" in setup_error(csv_module(root, train_csv="real.csv"))
    assert opened and not [p for p in opened if p.startswith(str(tmp_path / "outside"))]
    # a training CSV that is itself a symlink out of the root is refused before it is read
    (root / "train.csv").symlink_to(tmp_path / "outside" / "secret.png")
    assert "train.csv points to" in setup_error(csv_module(root))


def test_allow_outside_root_admits_the_link(tmp_path: Path, make_cfg) -> None:
    secret = outside_image(tmp_path)
    root = folder_dataset(tmp_path / "d")
    (root / "train" / "3").symlink_to(secret.parent, target_is_directory=True)
    overrides = [f"data.root={root}", "data.cache_dir=null", "data.image_size=[12,10]"]
    cfg = make_cfg("train", ["data=folder", *overrides, "data.allow_outside_root=true"])
    dm = build_datamodule(cfg)
    dm.setup()
    assert dm.class_names == ("0", "1", "2", "3")
    assert any(e.path.name == "secret.png" for e in dm.entries["train"] + dm.entries["val"])
    csv_root = csv_dataset(tmp_path / "c", LABELS)
    (csv_root / "train" / "1.png").unlink()
    (csv_root / "train" / "1.png").symlink_to(secret)
    csv_module(csv_root, allow_outside_root=True).setup()


def test_symlinks_inside_the_root_keep_working(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d")
    save_image(root / "extra" / "more" / "a.png", 99)
    (root / "train" / "3").symlink_to(root / "extra", target_is_directory=True)
    (root / "train" / "0" / "linked.png").symlink_to("../1/0.png")
    dm = folder_module(root)
    dm.setup()
    names = {e.name for e in dm.entries["train"] + dm.entries["val"]}
    assert {"3/more/a.png", "0/linked.png", "1/0.png"} <= names and len(names) == 14
    csv_root = csv_dataset(tmp_path / "c", LABELS)
    (csv_root / "train" / "1.png").unlink()
    (csv_root / "train" / "1.png").symlink_to("0.png")
    dm = csv_module(csv_root)
    dm.setup()
    assert len(dm.entries["train"]) + len(dm.entries["val"]) == len(LABELS)


# -- symlink loops ------------------------------------------------------------------------------
def test_symlink_loop_is_refused_by_train_in_seconds(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d")
    (root / "train" / "0" / "a").symlink_to("..", target_is_directory=True)
    t0 = time.perf_counter()
    proc, logs = train(tmp_path, "folder", root, "data.image_size=[12,10]")
    assert time.perf_counter() - t0 < 120
    assert_refused(proc, logs, "train/0/a", "is a symlink loop")


@pytest.mark.parametrize(
    "links",
    [
        {"train/0/a": ".."},  # the loop
        {f"train/{c}/a": ".." for c in range(3)},  # make_dataset walked 3**40 folders
        {"train/0/a": "."},
        {"train/0/a": "../../.."},  # with data.allow_outside_root (below): a loop, not a trip
        {"train/0/a": "../1", "train/1/b": "../0"},  # a cycle through two folders
        {"train/0/x.png": "y.png", "train/0/y.png": "x.png"},  # the OS's own ELOOP
        {"train/z": "."},  # a class folder that is its own split folder
    ],
)
def test_symlink_loops_are_refused_quickly(tmp_path: Path, links: dict[str, str]) -> None:
    root = folder_dataset(tmp_path / "d")
    for link, target in links.items():
        (root / link).symlink_to(target)
    t0 = time.perf_counter()
    opt_in = {"allow_outside_root": True} if "../../.." in links.values() else {}
    msg = setup_error(folder_module(root, **opt_in))  # loops are refused even so
    assert time.perf_counter() - t0 < 10
    assert str(root / next(iter(links))) in msg and "is a symlink loop" in msg


# -- CSV cells ----------------------------------------------------------------------------------
def test_nul_byte_in_a_train_csv_cell_is_one_error_line(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "d", LABELS)
    text = (root / "train.csv").read_text().replace("\n2,2\n", "\n2\x00.png,2\n")
    (root / "train.csv").write_text(text)
    proc, logs = train(tmp_path, "csv", root, "data.test_csv=null")
    assert_refused(proc, logs, "train.csv row 3 (line 4), column 'id': invalid character '\\x00'")


def test_control_characters_in_label_and_label_less_test_csv(tmp_path: Path) -> None:
    root = csv_dataset(tmp_path / "d", LABELS)
    text = (root / "train.csv").read_text().replace("\n4,1\n", "\n4,1\x07\n")
    (root / "train.csv").write_text(text)
    msg = setup_error(csv_module(root))
    assert msg.startswith("train.csv row 5 (line 6), column 'label': invalid character '\\x07'")
    csv_dataset(root, LABELS)
    save_image(root / "test" / "0.png", 5)
    (root / "test.csv").write_text("id\n0\n1\x00\n")
    msg = setup_error(csv_module(root, test_csv="test.csv", test_image_dir="test"))
    assert msg.startswith("test.csv row 2 (line 3), column 'id': invalid character '\\x00'")
    # predict.py reads CSVs with the same reader: the row keeps its place with the reason
    items = list_csv(root / "test.csv", root / "test").items
    assert "invalid character '\\x00'" in items[1].error and "row 2 (line 3)" in items[1].error


def test_csv_path_escaping_the_root_is_refused_by_train(tmp_path: Path) -> None:
    """Lexical escapes were refused before symlinks were (``test_file_sources`` has more cases)."""
    cell = "../secret.png"
    root = csv_dataset(tmp_path / "d", LABELS)
    save_image(root / "secret.png", 1)  # beside train/: outside data.image_dir
    text = (root / "train.csv").read_text().replace("\n1,1\n", f"\n{cell},1\n")
    (root / "train.csv").write_text(text)
    proc, logs = train(tmp_path, "csv", root, "data.test_csv=null")
    assert_refused(proc, logs, f"train.csv row 2 (line 3), column 'id': image path {cell!r}")


def test_shard_root_files_outside_it_are_refused(tmp_path: Path) -> None:
    from imgcls.data.shards_datamodule import ShardsDataModule
    from imgcls.engine.streaming.shards import write_meta

    secret = outside_image(tmp_path)
    root = tmp_path / "shards"
    (root / "train").mkdir(parents=True)
    (root / "train" / "index.json").write_text("{}")
    meta = dict(class_names=["0"], channels=1, image_size=[12, 10], splits={"train": 1})
    write_meta(root, {**meta, "mean": [0.5], "std": [0.5]})
    (root / "train" / "chunk-0-0.bin").symlink_to(secret)  # LitData would read it as a chunk
    assert f"chunk-0-0.bin points to {secret}" in setup_error(ShardsDataModule(str(root)))
    ShardsDataModule(str(root), allow_outside_root=True).setup()
    (root / "meta.json").rename(tmp_path / "outside" / "meta.json")
    (root / "meta.json").symlink_to(tmp_path / "outside" / "meta.json")
    assert "meta.json points to" in setup_error(ShardsDataModule(str(root)))


def test_predict_inputs_keep_a_row_for_links_out_of_the_input(tmp_path: Path) -> None:
    from imgcls.tasks.predict_inputs import list_inputs

    secret = outside_image(tmp_path)
    folder = tmp_path / "in"
    save_image(folder / "sub" / "a.png", 1)
    (folder / "b.png").symlink_to(secret)
    (folder / "sub" / "loop").symlink_to("..")
    items = {it.id: it.error for it in list_inputs(folder).items}
    assert items["sub/a.png"] == "" and f"points to {secret}" in items["b.png"]
    assert "is a symlink loop" in items["sub/loop"]
    assert list_inputs(folder, allow_outside_root=True).items[0].error == ""
    (folder / "list.csv").write_text("id\nsub/a.png\nb.png\n")
    rows = list_csv(folder / "list.csv")
    assert rows.items[0].error == "" and f"points to {secret}" in rows.items[1].error
