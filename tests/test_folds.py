"""k-fold cross-validation (data.num_folds / data.fold), its sweep summary, fresh-clone digits."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from pathlib import Path

import make_digit_datasets
import numpy as np
import pytest

from imgcls.data.csv_datamodule import CSVDataModule
from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.data.splits import stratified_folds
from imgcls.errors import ConfigError, DataError
from tests.conftest import MNIST_DATA, run_entry, tiny

K = 5


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fold_digits")
    args = ["--out", str(out), "--train", "200", "--test", "50", "--forms", "csv,folder"]
    assert make_digit_datasets.main(args) == 0
    return out


def _csv_dm(digits: Path, **kw) -> CSVDataModule:
    return CSVDataModule(
        root=str(digits / "digits_csv"),
        image_dir="train",
        test_csv="test.csv",
        test_image_dir="test",
        cache_dir=None,
        num_workers=1,
        **kw,
    )


def _names(dm, split: str) -> list[str]:
    dm.setup()
    return [e.name for e in dm.entries[split]]


def _labels(dm, split: str) -> list[str]:
    return [str(e.label) for e in dm.entries[split]]


@pytest.mark.parametrize("source", ["csv", "folder"])
def test_folds_are_stratified_disjoint_and_covering(digits: Path, source: str) -> None:
    def make(fold: int):
        kw = {"num_folds": K, "fold": fold, "split_seed": 7, "test_fraction": 0.1}
        if source == "csv":
            return _csv_dm(digits, **kw)
        return FolderDataModule(
            root=str(digits / "digits_folder"), image_size=[28, 28], cache_dir=None, **kw
        )

    dms = [make(f) for f in range(K)]
    vals = [set(_names(dm, "val")) for dm in dms]
    test = set(_names(dms[0], "test"))
    pool = set(_names(dms[0], "train")) | vals[0]
    assert all(set(_names(dm, "test")) == test for dm in dms)  # one test hold-out for all folds
    assert not test & pool
    # disjoint and covering
    assert sum(len(v) for v in vals) == len(pool) and set().union(*vals) == pool
    for dm, val in zip(dms, vals, strict=True):
        assert set(_names(dm, "train")) == pool - val  # train is the other folds
    per_fold = [Counter(_labels(dm, "val")) for dm in dms]
    for label in {lab for c in per_fold for lab in c}:
        counts = [c[label] for c in per_fold]
        assert max(counts) - min(counts) <= 1, (label, counts)


def test_folds_are_seeded(digits: Path) -> None:
    same = [_names(_csv_dm(digits, num_folds=K, fold=0, split_seed=1), "val") for _ in range(2)]
    other = _names(_csv_dm(digits, num_folds=K, fold=0, split_seed=2), "val")
    assert same[0] == same[1]
    assert set(other) != set(same[0])


def test_fold_function_balances_classes() -> None:
    y = np.repeat(np.arange(4), [7, 11, 5, 23])
    folds = stratified_folds(y, K, seed=0)
    for c in range(4):
        counts = np.bincount(folds[y == c], minlength=K)
        assert counts.max() - counts.min() <= 1
    sizes = np.bincount(folds, minlength=K)
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"num_folds": 5, "fold": 5}, "data.fold"),
        ({"num_folds": 5, "fold": -1}, "data.fold"),
        ({"num_folds": 5, "fold": None}, "data.fold"),
        ({"num_folds": 1, "fold": 0}, "data.num_folds"),
        ({"num_folds": None, "fold": 2}, "data.num_folds"),
    ],
)
def test_bad_fold_values_name_the_key(digits: Path, kw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _csv_dm(digits, **kw)


def test_class_smaller_than_folds_names_the_key(digits: Path) -> None:
    # 200 digits: every class has ~20, fewer than 50 folds
    with pytest.raises(ConfigError, match=r"data\.num_folds=50 .*only \d+ training images"):
        _csv_dm(digits, num_folds=50, fold=0).setup()


# every fold: 2 training steps, 1 validation batch, no test; jobs keep the diagnostics callback
SWEEP_FAST = tiny(
    "test=false",
    "data.cache_dir=null",
    "data.batch_size=32",
    test_batches=None,
    logger="csv",
    diagnostics=True,
)


def test_five_fold_sweep_summary_has_mean_and_std(digits: Path, tmp_path: Path) -> None:
    proc = run_entry(
        "train",
        "-m",
        "data=csv",
        f"data.root={digits}/digits_csv",
        f"data.num_folds={K}",
        "data.fold=0,1,2,3,4",
        "optimized_metric=val/acc",
        *SWEEP_FAST,
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    values = [
        json.loads((sweep / str(j) / "metrics.json").read_text())["metrics"]["val/acc"]
        for j in range(K)
    ]
    with open(sweep / "summary_seeds.csv", newline="") as f:
        (group,) = list(csv.DictReader(f))
    assert (group["n"], group["failed"], group["jobs"]) == (str(K), "0", "0 1 2 3 4")
    assert float(group["mean"]) == pytest.approx(statistics.fmean(values))
    assert float(group["std"]) == pytest.approx(statistics.stdev(values))
    md = (sweep / "summary.md").read_text()
    assert "## Per configuration (folds: mean ± std)" in md
    assert f"{statistics.fmean(values):.5g} ± {statistics.stdev(values):.2g}" in md


def test_users_missing_root_is_not_created(tmp_path: Path) -> None:
    root = tmp_path / "my_data"
    dm = CSVDataModule(root=str(root), digits_dir=str(tmp_path), cache_dir=None)
    with pytest.raises(DataError):
        dm.prepare_data()
    assert not root.exists() and not (tmp_path / "digits_csv").exists()


@pytest.mark.slow
def test_fresh_clone_runs_every_experiment(tmp_path: Path) -> None:
    data = tmp_path / "data"  # a fresh clone's data/: the bundled MNIST, no digits sets
    data.mkdir()
    (data / "MNIST").symlink_to(MNIST_DATA / "MNIST", target_is_directory=True)
    proc = run_entry(
        "train",
        "-m",
        "experiment=glob(*,exclude=flowers*)",
        "++trainer.fast_dev_run=true",
        f"paths.data_dir={data}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data / "digits_jpg" / "labels.csv").is_file()
    # the folder default is built the same way, from the bundled MNIST (data_dir has none)
    empty = tmp_path / "empty"
    dm = FolderDataModule(
        root=str(empty / "digits_folder"),
        digits_dir=str(empty),
        image_size=[28, 28],
        cache_dir=None,
    )
    dm.prepare_data()
    assert (empty / "digits_folder" / "train").is_dir() and dm.entries["train"]


def test_stream_path_uses_the_same_fold(digits: Path) -> None:
    kw = {"num_folds": K, "fold": 3, "split_seed": 5}
    memory = _csv_dm(digits, loading="memory", **kw)
    stream = _csv_dm(digits, loading="stream", **kw)
    assert _names(stream, "val") == _names(memory, "val")
    assert stream.loading_used == "stream"
    assert len(stream.val_dataloader().dataset) == len(memory.entries["val"])
