"""A new dataset layout is one ``FileListDataModule`` subclass (``list_files``) plus one YAML
extending ``configs/bases/file_source.yaml``: the base checks what it lists (naming the item),
and in a copy of the project the new layout trains, evaluates, predicts, exports and resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from imgcls.data.file_list import FileListDataModule
from imgcls.errors import DataError
from tests.conftest import MNIST_DATA, copy_project, make_digits, run_in_project

# the README's worked example, reading "<path> <label>" lines from <root>/<split>.txt
LAYOUT = '''"""<root>/<split>.txt lines: '<image path> <label>' (a layout of one test's own)."""

from imgcls.data.file_list import FileListDataModule


class PairsDataModule(FileListDataModule):
    def list_files(self):
        splits = {}
        for split in ("train", "val", "test"):
            listing = self.root / f"{split}.txt"
            if listing.exists():
                lines = listing.read_text().splitlines()
                splits[split] = [tuple(ln.split()) for ln in lines if ln.strip()]
        return splits
'''
YAML = """defaults:
  - /bases/file_source@_here_
  - augment: none
  - batch_mix: none
  - _self_

_target_: pairs_data.PairsDataModule
root: ${paths.data_dir}/pairs
name: pairs dataset
image_size: [28, 28]
channels: 1
"""


class Pairs(FileListDataModule):
    """The test's own layout: pairs handed in directly."""

    def __init__(self, pairs: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pairs = pairs

    def list_files(self):
        return self.pairs


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits(tmp_path_factory, 300, 60, form="folder")


def _pairs(root: Path, split_dir: str) -> list[tuple[str, str]]:
    return sorted(
        (str(p.relative_to(root)), p.parent.name) for p in (root / split_dir).glob("*/*.png")
    )


def _write_listing(digits: Path, out: Path) -> Path:
    shutil.copytree(digits, out / "images")
    for src, split in (("train", "train"), ("valid", "val")):
        lines = [f"images/{path} {label}" for path, label in _pairs(digits, src)]
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return out


def _dm(digits: Path, pairs: dict, **kwargs) -> Pairs:
    return Pairs(pairs, root=str(digits), cache_dir=None, image_size=[28, 28], channels=1, **kwargs)


def test_listed_pairs_become_the_splits_with_their_classes(digits: Path) -> None:
    train, val = _pairs(digits, "train"), _pairs(digits, "valid")
    dm = _dm(digits, {"train": train, "val": val})
    dm.setup()
    assert dm.splits is not None
    assert len(dm.splits["train"]) == len(train) and len(dm.splits["val"]) == len(val)
    assert list(dm.class_names) == sorted({label for _, label in train})
    assert dm.spec.in_channels == 1 and tuple(dm.spec.image_size) == (28, 28)
    first = dm.splits["train"].targets[0].item()
    assert dm.class_names[first] == train[0][1]


def test_without_a_val_split_a_fraction_of_each_class_is_held_out(digits: Path) -> None:
    dm = _dm(digits, {"train": _pairs(digits, "train")}, val_fraction=0.25)
    dm.setup()
    assert dm.splits is not None
    n = len(_pairs(digits, "train"))
    assert len(dm.splits["val"]) + len(dm.splits["train"]) == n
    assert abs(len(dm.splits["val"]) - n // 4) <= len(dm.class_names)


def test_the_base_brings_streaming_folds_and_leakage_checks(digits: Path) -> None:
    """What the README says a listing gets from the file-source base, on a listing's own data."""
    train, val = _pairs(digits, "train"), _pairs(digits, "valid")
    streamed = _dm(digits, {"train": train, "val": val}, loading="stream", num_workers=0)
    streamed.setup()
    assert streamed.loading_used == "stream" and streamed.splits is not None
    x, y, _ = streamed.splits["train"][0]
    assert tuple(x.shape) == (1, 28, 28) and int(y) == streamed.class_names.index(train[0][1])
    folds = [_dm(digits, {"train": train}, num_folds=3, fold=f) for f in range(3)]
    held_out = []
    for dm in folds:
        dm.setup()
        assert dm.splits is not None
        held_out.append(len(dm.splits["val"]))
    assert sum(held_out) == len(train)  # every image is held out by exactly one fold
    leaked = {"train": train, "val": [*val, train[0]]}  # a training image listed again for val
    with pytest.raises(DataError, match="data leakage"):
        _dm(digits, leaked, checks={"leakage": "error"}).setup()


def test_every_bad_item_is_named_in_one_error(digits: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    shutil.copy(digits / _pairs(digits, "train")[0][0], outside)
    link = digits / "train" / "escape.png"
    link.symlink_to(outside)
    try:
        train = [
            *_pairs(digits, "train")[:50],
            ("train/none/missing.png", "3"),  # not there
            ("train/escape.png", "4"),  # a symlink out of the root
            (str(outside), "5"),  # an absolute path outside it
            ("../" + outside.name, "6"),  # a relative one
            (_pairs(digits, "train")[0][0], ""),  # no label
            "not-a-pair",
        ]
        with pytest.raises(DataError) as err:
            _dm(digits, {"train": train}).setup()
    finally:
        link.unlink()
    text = str(err.value)
    for item in ("item 50", "item 51", "item 52", "item 53", "item 54", "item 55"):
        assert item in text, (item, text)
    assert "outside the data root" in text and "empty label" in text and "not found" in text


def test_an_unknown_split_name_is_refused(digits: Path) -> None:
    with pytest.raises(DataError, match=r"split\(s\) \['training'\]"):
        _dm(digits, {"train": _pairs(digits, "train"), "training": []}).setup()


def test_a_subclass_without_list_files_says_what_to_implement(digits: Path) -> None:
    with pytest.raises(NotImplementedError, match="must implement list_files"):
        FileListDataModule(root=str(digits), cache_dir=None).setup()


@pytest.mark.slow
def test_a_new_layout_trains_evaluates_predicts_exports_and_resumes(
    digits: Path, tmp_path: Path
) -> None:
    """One module in the project's ``src/`` (outside ``imgcls``: the trust boundary takes the
    project's own classes) and one YAML; nothing else edited."""
    project = copy_project(tmp_path / "project")
    (project / "data").mkdir()
    (project / "data" / "MNIST").symlink_to(MNIST_DATA / "MNIST")
    _write_listing(digits, project / "data" / "pairs")
    (project / "src" / "pairs_data.py").write_text(LAYOUT)
    (project / "configs" / "data" / "pairs.yaml").write_text(YAML)
    logs = tmp_path / "logs"
    quiet = ["logger=none", "~callbacks.diagnostics", "extras.print_config=false"]
    fit = ["data=pairs", "model=lenet", "trainer.max_epochs=1", f"paths.log_dir={logs}"]
    fit += ["data.test_fraction=0.2"]  # no listed test split: hold one out
    trained = run_in_project(project, "train", *fit, *quiet[1:])
    assert "val/acc" in trained.stdout
    run = next(logs.glob("train/runs/*"))
    ckpt = run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]
    assert stored["_target_"] == "pairs_data.PairsDataModule"
    common = [f"ckpt_path={ckpt}", f"paths.log_dir={logs}", *quiet[2:]]
    evaluated = run_in_project(project, "eval", *common, *quiet[:2])
    assert "test/acc" in evaluated.stdout
    image = next((digits / "valid").glob("*/*.png"))
    run_in_project(project, "predict", *common, f"input={image}")
    assert len(list(logs.glob("predict/runs/*/predictions.csv"))) == 1
    exported = run_in_project(project, "export", *common, "format=torchscript", "parity_images=8")
    assert "parity OK" in exported.stdout
    resumed = run_in_project(
        project, "train", *fit, *quiet[1:], "trainer.max_epochs=2", f"resume={run}"
    )
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
