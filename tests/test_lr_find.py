"""``tune=lr``: the learning-rate finder prints a suggestion and saves its plot; with
``tune.apply=true`` the optimizer trains with exactly that rate (OneCycle peaks at it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgcls.data.mnist_datamodule import ensure_mnist_raw
from imgcls.engine.checkpoints.load import load_checkpoint_dict
from tests.conftest import MNIST_DATA, run_entry


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 MNIST digits as PNG files listed in ``train.csv`` (id,label)."""
    from torchvision.datasets import MNIST

    ensure_mnist_raw(MNIST_DATA)
    test = MNIST(str(MNIST_DATA), train=False)
    root = tmp_path_factory.mktemp("csv")
    (root / "train").mkdir()
    rows = ["id,label"]
    for i in range(120):
        Image.fromarray(test.data[i].numpy()).save(root / "train" / f"{i}.png")
        rows.append(f"{i},{int(test.targets[i])}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def _suggested(stdout: str) -> float:
    found = re.findall(r"suggested learning rate: ([0-9.e+-]+)", stdout)
    assert len(found) == 1, stdout[-2000:]
    return float(found[0])


def _csv_args(root: Path) -> list[str]:
    return [
        "data=csv", f"data.root={root}", "data.test_csv=null", "data.batch_size=16",
        "data.cache_dir=null", "model=simple_cnn", "logger=none", "tune=lr",
        "tune.num_training=30", "~callbacks.diagnostics",
    ]  # fmt: skip


def test_lr_finder_prints_and_plots_without_training(digits_csv: Path, tmp_path: Path) -> None:
    proc = run_entry("train", *_csv_args(digits_csv), f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lr = _suggested(proc.stdout)
    assert 1e-6 < lr < 1.0
    assert (tmp_path / "lr_find.png").stat().st_size > 5000
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"][
        "tune/lr"
    ] == pytest.approx(lr, rel=1e-5)
    assert not list(tmp_path.rglob("*.ckpt"))  # no checkpoint left by the finder or a fit
    assert not list(Path("/tmp").glob("lr_find_*/.lr_find_*.ckpt"))


@pytest.mark.slow
def test_apply_trains_with_the_suggestion(digits_csv: Path, tmp_path: Path) -> None:
    """OneCycle peaks at the suggestion: the optimizer's saved ``max_lr`` and the hparams."""
    proc = run_entry(
        "train", *_csv_args(digits_csv), "tune.apply=true", "trainer.max_epochs=1", "test=false",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lr = _suggested(proc.stdout)
    ckpt = load_checkpoint_dict(next((tmp_path / "checkpoints").glob("epoch_*.ckpt")))
    [group] = ckpt["optimizer_states"][0]["param_groups"]
    assert group["max_lr"] == pytest.approx(lr, rel=1e-5)
    assert ckpt["hyper_parameters"]["optimizer"]["lr"] == pytest.approx(lr, rel=1e-5)
    sched = ckpt["lr_schedulers"][0]
    assert sched["max_lrs" if "max_lrs" in sched else "base_lrs"] is not None
    assert torch.isfinite(torch.tensor(group["lr"]))
