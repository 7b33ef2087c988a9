"""DDP correctness: every val/test image scored exactly once, metrics synced, multirun-safe."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from imgcls.data.base_datamodule import ImageDataModule, Splits
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.tasks.evaluate import evaluate
from tests.conftest import ROOT, run_entry, tiny

# 5 training steps; the diagnostics callback stays (its metrics are synced across ranks too)
TINY = tiny(train_batches=5, val_batches=None, test_batches=None, logger="csv", diagnostics=True)


class SevenImages(ImageDataModule):
    """7 labeled images (label = index): an odd split, so any padding or dropping shows."""

    def load_splits(self) -> Splits:
        self.class_names = tuple(str(i) for i in range(7))
        ds = TensorImageDataset(torch.zeros(7, 1, 4, 4, dtype=torch.uint8), torch.arange(7))
        return Splits(train=ds, val=ds, test=ds)


@pytest.mark.parametrize("split", ["val", "test", "predict"])
def test_eval_loaders_shard_without_padding(split: str) -> None:
    seen: list[int] = []
    for rank in (0, 1):
        dm = SevenImages(batch_size=2, eval_batch_size=2)
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        loader = getattr(dm, f"{split}_dataloader")()
        for images, targets in loader:  # whole batches still come from __getitems__
            assert images.dtype == torch.uint8 and images.shape[1:] == (1, 4, 4)
            seen += targets.tolist()
    assert sorted(seen) == list(range(7))  # 4 + 3 images: none repeated, none dropped


def test_single_process_loaders_are_unchanged() -> None:
    dm = SevenImages(batch_size=2, eval_batch_size=3)
    targets = [t.tolist() for _, t in dm.test_dataloader()]
    assert targets == [[0, 1, 2], [3, 4, 5], [6]]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_ddp_sim_test_acc_equals_single_process_eval(tmp_path: Path, make_cfg) -> None:
    # 1001 test images on 2 ranks (501 + 500) in batches of 128: a padding sampler would score
    # one image twice, a dropping one would skip it; either moves test/acc by ~5e-4.
    data = ["data.test_size=1001", "data.val_size=301", "data.eval_batch_size=128"]
    run_dir = tmp_path / "ddp"
    proc = run_entry("train", "trainer=ddp_sim", *TINY, *data, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = _metrics(run_dir)
    ckpt = ddp["best_checkpoint"]
    assert Path(ckpt).is_file()

    cfg = make_cfg(
        "eval", [f"ckpt_path={ckpt}", "trainer=cpu", "logger=csv", *data], out=tmp_path / "eval"
    )
    single = evaluate(cfg)

    assert abs(ddp["metrics"]["test/acc"] - single["test/acc"]) < 1e-6
    assert abs(ddp["metrics"]["test/loss"] - single["test/loss"]) < 1e-5
    # the accuracy is a count over exactly 1001 images
    correct = ddp["metrics"]["test/acc"] * 1001
    assert abs(correct - round(correct)) < 1e-3


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_once_in_its_own_dir(tmp_path: Path) -> None:
    proc = run_entry(
        "train",
        "-m",
        "trainer=ddp_sim",
        "model.scheduler.max_lr=0.01,0.02",
        *tiny(train_batches=5, val_batches=2, test_batches=2, logger="csv", diagnostics=True),
        "data.val_size=301",
        f"paths.log_dir={tmp_path}",
        timeout=900,  # a rank waiting for a peer that never comes would hang here
        env={"PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # nothing but the one sweep: no run dir or second sweep started by a rank process
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*")] == ["train/multiruns"]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not list(tmp_path.rglob(".pl_hydra*"))
    for job in ("0", "1"):
        m = _metrics(sweep / job)["metrics"]
        assert 0.0 < m["val/acc_best"] <= 1.0 and "test/acc" in m
        # both ranks ran this job and logged into its dir
        assert (sweep / job / "train.log").read_text().count("starting training") == 2
    summary = (sweep / "summary.md").read_text()
    assert "- jobs: 2, completed 2, failed 0" in summary
