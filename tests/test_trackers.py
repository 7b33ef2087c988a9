"""Experiment trackers: a short real run per tracker, read back with the tracker's own tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_entry

# one short MNIST epoch: ~15 s per run, most of it imports
SHORT = (
    "extras.print_config=false",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=40",
    "+trainer.limit_val_batches=4",
    "+trainer.limit_test_batches=4",
    "~callbacks.diagnostics",
)


def _train(logs: Path, *overrides: str):
    proc = run_entry("train", f"paths.log_dir={logs}", *SHORT, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _mlflow_run(logs: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{logs / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_mlflow_run_reads_back_metrics_params_and_checkpoint(tmp_path) -> None:
    pytest.importorskip("mlflow")
    _train(tmp_path, "logger=mlflow", "tags=[mnist,smoke]")
    client, run = _mlflow_run(tmp_path)  # the default store, under paths.log_dir
    metrics = run.data.metrics
    assert metrics["val/acc"] > 0.5 and metrics["test/acc"] > 0.5
    assert run.data.params["model/net/_target_"] == "imgcls.models.nets.lenet.LeNet"
    assert run.data.params["params/total"] == "44426"
    assert run.data.tags["mnist"] == "true" and run.data.tags["smoke"] == "true"
    assert run.info.status == "FINISHED"
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert run.info.run_name == run_dir.name
    # the best checkpoint is an artifact, stored inside logs/mlflow
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "epoch_000")]
    assert "epoch_000/epoch_000.ckpt" in artifacts
    assert list((tmp_path / "mlflow" / "artifacts").rglob("epoch_000.ckpt"))


def test_wandb_writes_an_offline_run_with_the_metrics(tmp_path) -> None:
    pytest.importorskip("wandb")
    proc = _train(tmp_path, "logger=wandb")
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline.glob("*.wandb")
    data = records.read_bytes()
    # history and config records carry their keys as plain protobuf strings
    for key in (b"val/acc", b"test/acc", b"params/total"):
        assert key in data, key
    # the task finished the run itself (not only wandb's atexit hook)
    assert "wandb run finished" in proc.stderr + proc.stdout
    assert "finishing run" in (offline / "logs" / "debug.log").read_text()


def test_tensorboard_and_mlflow_together_both_get_data(tmp_path) -> None:
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path, "logger=[tensorboard,mlflow]")
    _, run = _mlflow_run(tmp_path)
    assert run.data.metrics["val/acc"] > 0.5
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert "val/acc" in acc.Tags()["scalars"]
