"""Multi-process paths that fail soft: DDP sweeps with a failing job, one decode per node, the
feature cache's barrier, SIGTERM under DDP. Every run is its own process group with a timeout,
and no process mentioning the test's tmp dir may be alive 3 s after it returns."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import make_digits, tiny
from tests.process_tools import (
    finish,
    nothing_left_behind,
    run_entry_isolated,
    start_entry,
)

# the diagnostics callback stays: its metrics are synced across ranks too
TINY = tiny("trainer=ddp_sim", train_batches=5, val_batches=2, logger="csv", diagnostics=True)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


# -- a failing DDP job in a sweep -------------------------------------------------------------
def _check_failing_sweep(tmp_path: Path, *launcher: str) -> None:
    with nothing_left_behind(tmp_path):
        r = run_entry_isolated(
            "train",
            "-m",
            "model.optimizer.lr=-1.0,0.01",  # job 0 fails inside fit, after its ranks started
            *TINY,
            *launcher,
            f"paths.log_dir={tmp_path}",
            out=tmp_path / "out",
            timeout=900,
        )
    assert r.returncode == 1, r.stderr[-3000:]
    assert "error: 1 of 2 jobs failed (job 0)" in r.stderr
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    rows = _rows(sweep / "summary.csv")
    assert [(row["job"], row["status"]) for row in rows] == [("0", "failed"), ("1", "completed")]
    assert rows[0]["error"] == "ValueError: Invalid learning rate: -1.0"
    assert "- jobs: 2, completed 1, failed 1" in (sweep / "summary.md").read_text()
    # job 1 ran to the end on both ranks, with its checkpoints
    ckpt = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    assert (sweep / "1" / "checkpoints" / "epoch_000.ckpt").is_file()
    assert 0.0 < _metrics(sweep / "1")["val/acc_best"] <= 1.0
    assert (sweep / "1" / "train.log").read_text().count("starting training") == 2


def test_failing_ddp_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    _check_failing_sweep(tmp_path)


@pytest.mark.slow
def test_failing_ddp_job_with_submitit_local(tmp_path: Path) -> None:
    _check_failing_sweep(tmp_path, "hydra/launcher=submitit_local")


# -- data prepared once per node --------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory, train=300, test=60)


def _folder(root: Path, tmp_path: Path) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "data.image_size=[28,28]",  # the digits are mixed-size
        f"data.cache_dir={tmp_path}/decoded",
        "data.eval_batch_size=64",
        f"paths.log_dir={tmp_path}/logs",
    ]


@pytest.mark.slow
def test_ddp_decodes_once_and_matches_a_run_from_the_cache(digits: Path, tmp_path: Path) -> None:
    runs = {}
    with nothing_left_behind(tmp_path):
        for name in ("fresh", "cached"):
            run = tmp_path / name
            r = run_entry_isolated(
                "train", *TINY, *_folder(digits, tmp_path), f"hydra.run.dir={run}", out=run
            )
            assert r.returncode == 0, r.stderr[-3000:]
            runs[name] = (run / "train.log").read_text()
    fresh, cached = runs["fresh"], runs["cached"]
    # both ranks logged into the run's train.log: rank 0 decoded, then both mapped its file
    assert fresh.count("starting training") == 2
    decodes = [line for line in fresh.splitlines() if "images once into on-disk cache" in line]
    assert len(decodes) == 1 and "by rank 0 " in decodes[0]
    for log in (fresh, cached):
        loaded = [line for line in log.splitlines() if "decode cache: loaded 360 decoded" in line]
        assert sorted(line.split(" s, rank ")[1][0] for line in loaded) == ["0", "1"]
    assert "images once into" not in cached
    assert _metrics(tmp_path / "fresh") == _metrics(tmp_path / "cached")


@pytest.mark.slow
def test_ddp_feature_cache_without_then_with_the_file(digits: Path, tmp_path: Path) -> None:
    resnet = [
        "model=resnet18",
        "model.weights=null",
        "model.cache_features=true",
        "model.net.freeze=true",  # weights=null trains the whole net unless frozen
        f"model.cache_dir={tmp_path}/features",
        "data.image_size=[32,32]",
        "callbacks.diagnostics=null",
    ]
    logs = {}
    with nothing_left_behind(tmp_path):
        for name in ("compute", "reuse"):
            run = tmp_path / name
            r = run_entry_isolated(
                "train",
                *TINY,
                *_folder(digits, tmp_path),
                *resnet,
                f"hydra.run.dir={run}",
                out=run,
                timeout=600,  # a rank left alone at the barrier would hang here
            )
            assert r.returncode == 0, r.stderr[-3000:]
            logs[name] = (run / "train.log").read_text()
    assert logs["compute"].count("feature cache miss: computing") == 2  # train, val; rank 0
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "features").glob("*.pt")) == [
        "train",
        "val",
    ]
    assert "feature cache miss" not in logs["reuse"]
    assert logs["reuse"].count("feature cache hit") == 4  # 2 splits x 2 ranks


# -- SIGTERM under DDP --------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_to_a_ddp_fit_saves_one_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        *tiny(
            "trainer=ddp_sim",
            "data.val_size=500",
            "callbacks.last_checkpoint.every_n_train_steps=5",
            epochs=2,
            train_batches=20,
            logger="csv",
            diagnostics=True,
        ),
        f"hydra.run.dir={run}",
    ]
    slow = ["+callbacks.slow._target_=tests.fault_helpers.SlowSteps", "+callbacks.slow.seconds=0.3"]
    last = run / "checkpoints" / "last.ckpt"
    with nothing_left_behind(tmp_path):
        t0 = time.monotonic()
        proc = start_entry("train", *args, *slow, out=tmp_path / "first")
        try:
            while not last.exists() and proc.poll() is None and time.monotonic() - t0 < 600:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be signalled"
            signalled = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler preempting the job does
            r = finish(proc, tmp_path / "first", timeout=60, t0=signalled)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert r.returncode == 143, r.stderr[-3000:]
        assert r.seconds < 60
        stopped_at = int(r.stderr.split("stopped by SIGTERM at global step ")[1].split()[0])
        assert 5 <= stopped_at < 40
        log = (run / "train.log").read_text()
        assert f"SIGTERM: all 2 ranks stop after global step {stopped_at}" in log
        ckpt = torch.load(last, weights_only=True)
        assert ckpt["global_step"] == stopped_at

        resumed = run_entry_isolated("train", *args, f"resume={run}", out=tmp_path / "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(epoch {ckpt['epoch']}, global step {stopped_at})" in (run / "train.log").read_text()
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 40
    assert final["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"] == 2
    assert "test/acc" in _metrics(run)


# -- which jobs run in their own process group --------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "env", "expected"),
    [
        (["trainer=ddp_sim"], {}, True),
        (["trainer=default"], {}, False),
        (["trainer=ddp_sim", "trainer.devices=1"], {}, False),
        (["trainer=ddp_sim", "trainer.strategy=ddp_spawn"], {}, False),
        # torchrun started every rank itself: Lightning spawns and observes nothing
        (
            ["trainer=ddp_sim"],
            {"TORCHELASTIC_RUN_ID": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
            False,
        ),
    ],
)
def test_which_trainers_start_rank_processes(make_cfg, monkeypatch, overrides, env, expected):
    from imgcls.engine.sweeps.job_process import launches_rank_processes

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert launches_rank_processes(make_cfg("train", overrides).trainer) is expected


def test_the_first_rank_error_is_the_one_reported(tmp_path: Path, monkeypatch) -> None:
    import pickle

    from imgcls.engine.sweeps.job_process import (
        ERROR_FILE,
        ERROR_FILE_ENV,
        _failure,
        record_job_error,
    )

    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / ERROR_FILE))
    record_job_error(ValueError("Invalid learning rate: -1.0"))
    record_job_error(RuntimeError("Connection closed by peer"))  # a rank that only followed
    error = pickle.loads(pickle.dumps(_failure(1, tmp_path)))  # as submitit returns it
    assert error.description == "ValueError: Invalid learning rate: -1.0"
    assert "exited with code 1" in str(error) and str(tmp_path / "train.log") in str(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ERROR_FILE]
