"""test/* only from a labeled test split, and eval scores a checkpoint on its own run's data.

A ``data=csv`` run (label-less test.csv) logs no ``test/*`` at all; with ``data.test_fraction``
it logs ``test/acc`` on images that are in neither train nor val (checked by file name), and
``eval.py`` without ``data=`` reproduces each run's metric exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from imgcls.builder import build_datamodule
from imgcls.data.images import load_image
from imgcls.data.transforms import normalize
from imgcls.models.load import load_classifier
from imgcls.tasks.evaluate import evaluate
from imgcls.tasks.train import train
from tests.conftest import compose_config, make_digits, run_entry, tiny

# 2 epochs of every batch: the runs' metrics are compared with eval's exactly
QUICK = tiny(
    "model=lenet",
    "data.cache_dir=null",
    epochs=2,
    train_batches=None,
    val_batches=None,
    test_batches=None,
    logger="csv",
    accelerator="cpu",
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory, train=600, test=40, form="csv")


@pytest.fixture(scope="module")
def run_without_test(digits: Path, tmp_path_factory) -> Path:
    """data=csv as shipped (its test.csv has no labels), trained in-process (no .hydra dir)."""
    out = tmp_path_factory.mktemp("no_test")
    train(compose_config("train", ["data=csv", f"data.root={digits}", *QUICK], out))
    return out


@pytest.fixture(scope="module")
def run_with_test(digits: Path, tmp_path_factory) -> tuple[Path, str]:
    """data=csv with data.test_fraction=0.1, through the entry point (a real run dir)."""
    logs = tmp_path_factory.mktemp("with_test")
    proc = run_entry(
        "train",
        "data=csv",
        f"data.root={digits}",
        "data.test_fraction=0.1",
        *QUICK,
        f"paths.log_dir={logs}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = logs.glob("train/runs/*")
    return run, proc.stdout + proc.stderr


def _summary(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_label_less_csv_logs_no_test_metrics(run_without_test: Path) -> None:
    summary = _summary(run_without_test)
    assert summary["test"] == "no labeled test split"
    assert not [k for k in summary["metrics"] if k.startswith("test/")], summary["metrics"]
    assert summary["metrics"]["val/acc_best"] > 0.5
    logged = "".join(p.read_text() for p in run_without_test.rglob("metrics.csv"))
    assert "val/acc" in logged and "test/" not in logged


def test_test_fraction_scores_images_in_neither_train_nor_val(run_with_test) -> None:
    run, log_text = run_with_test
    summary = _summary(run)
    assert "test" not in summary and "holding out 10% of each class as the test split" in log_text
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    dm = build_datamodule(
        OmegaConf.create({"data": OmegaConf.to_container(cfg.data, resolve=True)})
    )
    names = {s: [e.path.name for e in dm.entries[s]] for s in ("train", "val", "test")}
    all_labels = [e.label for s in ("train", "val", "test") for e in dm.entries[s]]
    for c in set(all_labels):  # 10 % of each class, rounded per class
        n_test = sum(e.label == c for e in dm.entries["test"])
        assert n_test == round(0.1 * all_labels.count(c)), c
    assert len(set(names["test"])) == len(names["test"]) > 0
    assert not set(names["test"]) & set(names["train"]) and not set(names["test"]) & set(
        names["val"]
    )
    assert not set(names["train"]) & set(names["val"])
    assert len(names["train"]) + len(names["val"]) + len(names["test"]) == 600
    # test/acc is the best checkpoint's accuracy on exactly these files, decoded from disk
    model = load_classifier(summary["best_checkpoint"])
    spec = model.spec
    x = torch.stack(
        [load_image(e.path, channels=1, size=spec.image_size) for e in dm.entries["test"]]
    )
    y = torch.tensor([spec.class_names.index(e.label) for e in dm.entries["test"]])
    with torch.no_grad():
        pred = model(normalize(x, spec.mean, spec.std)).argmax(1)
    assert summary["metrics"]["test/acc"] == pytest.approx(
        (pred == y).float().mean().item(), abs=1e-6
    )


def test_test_fraction_refused_where_a_labeled_test_split_exists(tmp_path: Path) -> None:
    from imgcls.errors import ConfigError

    cfg = compose_config("train", ["data=folder", "data.test_fraction=0.1"], tmp_path)
    cfg.data.root = str(tmp_path)
    for split in ("train", "test"):
        for c in "ab":
            for i in range(3):
                from PIL import Image

                p = tmp_path / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (8, 8), 40 * i).save(p)
    cfg.data.image_size = [8, 8]
    cfg.data.cache_dir = None
    with pytest.raises(
        ConfigError, match="already has a labeled test split; set data.test_fraction=null"
    ):
        build_datamodule(cfg)


def test_eval_uses_the_data_its_checkpoint_stores(run_with_test, tmp_path: Path) -> None:
    run, _ = run_with_test
    summary = _summary(run)
    proc = run_entry(
        "eval",
        f"ckpt_path={summary['best_checkpoint']}",
        f"paths.log_dir={tmp_path}",
        "extras.print_config=false",
        "logger=csv",
        "~callbacks.diagnostics",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"data config: stored in the checkpoint {summary['best_checkpoint']}"
        in proc.stdout + proc.stderr
    )
    evaluated = _summary(next(tmp_path.glob("eval/runs/*")))["metrics"]
    assert evaluated["test/acc"] == summary["metrics"]["test/acc"]
    assert evaluated["test/loss"] == pytest.approx(summary["metrics"]["test/loss"], rel=1e-6)


def test_eval_uses_the_checkpoints_stored_data_config(
    run_without_test: Path, tmp_path, caplog
) -> None:
    summary = _summary(run_without_test)
    ckpt = tmp_path / "moved.ckpt"  # no run dir around it: only the checkpoint tells
    shutil.copy(summary["best_checkpoint"], ckpt)
    cfg = compose_config(
        "eval", [f"ckpt_path={ckpt}", "logger=csv", "~callbacks.diagnostics"], tmp_path
    )
    with caplog.at_level("INFO"):
        metrics = evaluate(cfg)
    assert (
        f"data config: stored in the checkpoint {ckpt} (datamodule_hyper_parameters): "
        in caplog.text
    )
    assert "no labeled test split" in caplog.text and not [k for k in metrics if "test/" in k]
    # the best checkpoint's validation accuracy, exactly (it was chosen on it)
    assert metrics["val/acc"] == summary["metrics"]["val/acc_best"]
