"""A first run reads well: run dir and overrides on the console, no tips, one-line errors."""

from __future__ import annotations

import pytest

from tests.conftest import run_entry


def test_short_run_console_shows_run_dir_and_overrides_not_tips(tmp_path) -> None:
    proc = run_entry(
        "train",
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=5",
        "+trainer.limit_val_batches=1",
        "test=false",
        "~callbacks.diagnostics",
        env={"PYTHONWARNINGS": "default"},  # the run's own filters, not the harness's
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert f"run dir: {run_dir}" in out
    assert "overrides: " in out and "+trainer.limit_train_batches=5" in out
    assert "model=ImageClassifier/LeNet batch=256" in out
    assert "Tip" not in out and "litlogger" not in out and "LeafSpec" not in out
    # the whole tree goes to the file only
    assert "CONFIG" not in out
    assert "model_checkpoint" in (run_dir / "config_tree.log").read_text()


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
    from imgcls.sweeps.optuna_study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert (tmp_path / "new" / "deeper" / "study.db").is_file()
