"""The issue's checks of the stream and shard paths (slow: full digits set, DDP processes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import make_digit_datasets
import make_shards
import pytest

from tests.conftest import ROOT, run_entry


def _train(tmp_path: Path, *overrides: str, timeout: int = 1200) -> dict[str, float]:
    r = run_entry(
        "train",
        *overrides,
        f"paths.log_dir={tmp_path}/",
        "logger=csv",
        "extras.print_config=false",
        timeout=timeout,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = tmp_path.glob("train/runs/*/metrics.json")
    metrics = json.loads(summary.read_text())["metrics"]
    print({k: round(v, 4) for k, v in metrics.items() if "acc" in k})  # shown by pytest -rP
    return metrics


@pytest.fixture(scope="module")
def full_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits_full")
    assert make_digit_datasets.main(["--out", str(out), "--forms", "folder"]) == 0
    return out / "digits_folder"


@pytest.mark.slow
def test_stream_matches_memory_within_one_point(full_folder: Path, tmp_path: Path) -> None:
    """data=folder data.loading=stream vs memory: same seed, same epochs, val acc within 1 point."""
    common = [
        "data=folder",
        "data.image_size=[28,28]",  # a digits set outside the default root: its size is ours to set
        f"data.root={full_folder}",
        "model=lenet",
        "trainer.max_epochs=5",
        "seed=12345",
        "data.cache_dir=null",
    ]
    memory = _train(tmp_path / "memory", *common, "data.loading=memory")
    stream = _train(tmp_path / "stream", *common, "data.loading=stream")
    assert memory["val/acc_best"] >= 0.95, memory
    assert abs(stream["val/acc_best"] - memory["val/acc_best"]) <= 0.01, (memory, stream)


def _ids(record: Path, pattern: str) -> list[int]:
    out: list[int] = []
    for f in sorted(record.glob(pattern)):
        out += [int(s) for s in f.read_text().split()]
    return out


@pytest.mark.slow
def test_shards_one_ddp_epoch_sees_every_sample_once(tmp_path: Path) -> None:
    """Convert a folder set into shards, train 1 epoch under trainer=ddp_sim (2 ranks x 2
    workers): every training and validation sample reaches exactly one rank, once."""
    out = tmp_path / "gen"
    # 512 training images = 8 chunks of 64: 2 per loader worker, so LitData drops none
    args = ["--out", str(out), "--train", "512", "--test", "101", "--forms", "folder"]
    assert make_digit_datasets.main(args) == 0
    shards = tmp_path / "shards"
    assert (
        make_shards.main(
            [
                "--out",
                str(shards),
                "--chunk-size",
                "64",
                "data=folder",
                f"data.root={out}/digits_folder",
                "data.val_dir=valid",
            ]
        )
        == 0
    )
    meta = json.loads((shards / "meta.json").read_text())
    n_train, n_val = meta["splits"]["train"], meta["splits"]["val"]
    assert (n_train, n_val) == (512, 101)
    record = tmp_path / "ids"
    metrics = _train(
        tmp_path / "run",
        "data=shards",
        f"data.root={shards}",
        "data._target_=tests.shard_helpers.RecordingShardsDataModule",
        f"+data.record_dir={record}",
        "data.batch_size=32",
        "trainer=ddp_sim",
        "trainer.max_epochs=1",
        "test=false",
        timeout=900,
    )
    assert 0.0 <= metrics["val/acc"] <= 1.0, metrics  # validated on both ranks, synced
    per_rank = [_ids(record, f"train-rank{r}-epoch0.txt") for r in (0, 1)]
    assert all(per_rank), "both ranks train"
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == n_train and sorted(seen) == list(range(n_train))
    val = _ids(record, "val-rank*-epoch0.txt")
    assert len(val) == n_val and sorted(val) == list(range(n_val))  # odd size: no padding
    stray = subprocess.run(["pgrep", "-f", str(shards)], capture_output=True, text=True)
    assert stray.stdout.strip() == "", f"processes left behind: {stray.stdout}"
