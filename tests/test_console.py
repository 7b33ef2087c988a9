"""A first run reads well: run dir and overrides on the console, no tips, one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_entry

LIGHTNING_NOISE = (
    "Tip",
    "litlogger",
    "LeafSpec",
    "Trainer already configured with model summary callbacks",
    "configure_callbacks` will override",
    "Restoring states",
    "Loaded model weights",
    "TPU available",
    "Loading `train_dataloader`",
)


def test_first_run_reads_well_at_80_columns(tmp_path) -> None:
    proc = run_entry(
        "train",
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=5",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        "~callbacks.diagnostics",
        env={"PYTHONWARNINGS": "default", "COLUMNS": "80"},  # the run's own filters
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert "overrides: " in out and "+trainer.limit_train_batches=5" in out
    assert "model=ImageClassifier/LeNet batch=256" in out
    for noise in LIGHTNING_NOISE:
        assert noise not in out, noise
    # the whole tree goes to the file only
    assert "CONFIG" not in out
    assert "model_checkpoint" in (run_dir / "config_tree.log").read_text()
    # the summary lists the net's layers, not the metric objects
    assert "net.features.0" in out and "Conv2d" in out
    assert "MulticlassAccuracy" not in out and "val_metrics" not in out
    # the bar's row holds its metrics: none wraps into a column of its own
    (bar,) = [line for line in out.splitlines() if line.startswith("Epoch 0/0")]
    assert "train/loss: " in bar and "val/acc: " in bar and len(bar) <= 80, bar
    assert not [line for line in out.splitlines() if line.strip().startswith(("val/", "0."))]
    # the last lines: run dir, the test accuracy, the next commands with real paths
    test_acc = json.loads((run_dir / "metrics.json").read_text())["metrics"]["test/acc"]
    tail = proc.stdout.strip().splitlines()[-7:]
    report = f"report: {run_dir / 'report.html'} (opens from disk)"
    assert tail[:4] == [f"run dir: {run_dir}", tail[1], report, "next:"], tail
    assert tail[1].startswith(f"result: test/acc {test_acc:.4f}")
    tail = tail[:2] + tail[3:]
    (ckpt,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    assert tail[3] == f"  python src/eval.py ckpt_path={ckpt}"
    assert tail[4].startswith(f"  python src/predict.py ckpt_path={ckpt} input=")
    assert tail[5] == f"  tensorboard --logdir {run_dir / 'tensorboard'}"
    assert (run_dir / "tensorboard").is_dir()


def test_missing_ckpt_path_is_one_error_line(tmp_path) -> None:
    proc = run_entry("eval", f"paths.log_dir={tmp_path}")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ckpt_path" in errors[0], out[-2000:]
    assert "Traceback" not in out and "MissingMandatoryValue" not in out
    # printed once on the console (the run's log file keeps its own copy)
    assert out.count("missing required argument") == 1, out[-2000:]


def test_missing_predict_input_names_it(tmp_path) -> None:
    proc = run_entry("predict", f"paths.log_dir={tmp_path}", "ckpt_path=x.ckpt")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "input" in errors[0] and "ckpt_path" not in errors[0]


def test_optuna_sqlite_storage_folder_is_created(tmp_path) -> None:
    optuna = pytest.importorskip("optuna")
    from imgcls.engine.sweeps.optuna_study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert (tmp_path / "new" / "deeper" / "study.db").is_file()
