"""The sweep table: statuses, best job, seed repeats as mean ± std, unfinished jobs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from imgcls.engine.sweeps.callback import write_summary
from imgcls.engine.sweeps.jobs import STATUS_FILE, TRIALS_FILE
from imgcls.engine.sweeps.multirun_ddp import rank_command
from imgcls.engine.sweeps.summary import summarize


def _job(sweep: Path, num: int, overrides: list[str], value: float | None, error: str = "") -> None:
    d = sweep / str(num)
    d.mkdir(parents=True)
    status = {
        "num": num,
        "status": "failed" if error else "completed",
        "overrides": overrides,
        "value": value,
        "error": error,
        "run_dir": str(d),
    }
    (d / STATUS_FILE).write_text(json.dumps(status))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_seed_repeats_are_summarized_per_configuration(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["model=lenet", "seed=1"], 0.90)
    _job(tmp_path, 1, ["model=lenet", "seed=2"], 0.80)
    _job(tmp_path, 2, ["model=mlp", "seed=1"], 0.95)
    _job(tmp_path, 3, ["model=mlp", "seed=2"], None, error="ConfigError: bad")
    _job(tmp_path, 4, ["model=mlp", "seed=3"], 0.55)

    summary = write_summary(tmp_path, "val/acc_best", "max")

    jobs = _rows(tmp_path / "summary.csv")
    assert [r["status"] for r in jobs] == ["completed"] * 3 + ["failed", "completed"]
    assert [r["best"] for r in jobs] == ["0", "0", "1", "0", "0"]  # the single best job
    assert jobs[3]["error"] == "ConfigError: bad"
    # the jobs' own values, exactly (repr round-trips); a failed job has none
    assert [r["optimized_metric"] for r in jobs] == ["0.9", "0.8", "0.95", "", "0.55"]
    assert [r["overrides"] for r in jobs][3] == "model=mlp seed=2"

    groups = _rows(tmp_path / "summary_seeds.csv")
    assert [g["configuration"] for g in groups] == ["model=lenet", "model=mlp"]
    lenet, mlp = groups
    assert (lenet["n"], lenet["failed"], lenet["jobs"]) == ("2", "0", "0 1")
    assert float(lenet["mean"]) == pytest.approx(statistics.fmean([0.9, 0.8]), rel=1e-15)
    assert float(lenet["std"]) == pytest.approx(statistics.stdev([0.9, 0.8]), rel=1e-12)
    assert (mlp["n"], mlp["failed"], mlp["jobs"]) == ("2", "1", "2 3 4")
    assert float(mlp["mean"]) == pytest.approx(statistics.fmean([0.95, 0.55]), rel=1e-15)
    assert float(mlp["std"]) == pytest.approx(statistics.stdev([0.95, 0.55]), rel=1e-12)
    # the best configuration is the best mean, not the configuration of the best single job
    assert (lenet["best"], mlp["best"]) == ("1", "0")

    md = (tmp_path / "summary.md").read_text()
    assert "| `model=lenet` ★ | 2 | 0.85 ± 0.071 | 0 | 0, 1 |" in md
    assert "- jobs: 5, completed 4, failed 1" in md
    assert "- best job: 2 (val/acc_best = 0.95): `model=mlp seed=1`" in md
    assert "| 3 | failed |  | `model=mlp seed=2` | [3](3) | ConfigError: bad |" in md
    assert summary.best is not None and summary.best.num == 2


def test_minimized_metric_and_unfinished_jobs(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["lr=0.1"], 0.30)
    _job(tmp_path, 1, ["lr=0.2"], 0.20)
    running = tmp_path / "2" / ".hydra"  # started, never reported back (killed)
    running.mkdir(parents=True)
    (running / "overrides.yaml").write_text("- lr=0.3\n")
    (tmp_path / ".submitit").mkdir()  # launcher bookkeeping is not a job

    summary = summarize(tmp_path, "val/loss", "min")

    assert [(j.num, j.status, j.best) for j in summary.jobs] == [
        (0, "completed", False),
        (1, "completed", True),
        (2, "incomplete", False),
    ]
    assert summary.jobs[2].overrides == ["lr=0.3"]
    assert [j.num for j in summary.failed] == [2]
    assert not summary.has_seed_repeats
    assert [j.value for j in summary.jobs] == [0.30, 0.20, None]


def test_ddp_rank_reruns_the_job_not_the_sweep() -> None:
    cmd = rank_command(
        script="/repo/src/train.py",
        task_overrides=["model=lenet", "trainer=ddp_sim", "hparams_search=mnist_optuna"],
        hydra_overrides=[
            "hydra.mode=MULTIRUN",
            "hydra/launcher=submitit_local",
            "hydra.sweeper.n_trials=4",
            "hydra.job.chdir=true",
        ],
        output_dir="/logs/train/multiruns/2026/3",
        config_dir="/repo/configs",
        config_name="train",
        local_rank=1,
        python="python",
    )
    assert cmd == [
        "python",
        "/repo/src/train.py",
        "--config-path=/repo/configs",
        "--config-name=train",
        "model=lenet",
        "trainer=ddp_sim",
        "hparams_search=mnist_optuna",
        "hydra.job.chdir=true",
        'hydra.run.dir="/logs/train/multiruns/2026/3"',
        "hydra.job.name=ddp_rank_1",
        "hydra.output_subdir=null",
        # hparams_search configs switch to multirun themselves; a rank is one run
        "hydra.mode=RUN",
    ]


def test_jobs_without_a_labeled_test_split_say_so(tmp_path: Path) -> None:
    """optimized_metric=test/acc on data without a test split: the table names the reason."""
    for num, data in ((0, "data=csv"), (1, "data=mnist")):
        _job(tmp_path, num, [data], None if num == 0 else 0.98)
        metrics = {"val/acc_best": 0.9} if num == 0 else {"test/acc": 0.98}
        note = {"test": "no labeled test split"} if num == 0 else {}
        (tmp_path / str(num) / "metrics.json").write_text(json.dumps({"metrics": metrics, **note}))
    write_summary(tmp_path, "test/acc", "max")
    rows = _rows(tmp_path / "summary.csv")
    assert [r["optimized_metric"] for r in rows] == ["no labeled test split", "0.98"]
    md = (tmp_path / "summary.md").read_text()
    assert "- test/*: none, no labeled test split in job(s) 0" in md
    assert "| 0 | completed | no labeled test split | `data=csv` |" in md


def test_optuna_trials_table_is_the_studys(tmp_path: Path) -> None:
    """optuna_trials.csv holds the study's values and params exactly."""
    optuna = pytest.importorskip("optuna")
    from imgcls.engine.sweeps.optuna_study import trials_table

    def objective(trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number % 2:
            trial.suggest_int("k", 1, 3)  # drawn by some trials only: stays an int
        return x

    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=4)
    (tmp_path / TRIALS_FILE).write_text(trials_table(study))
    rows = _rows(tmp_path / TRIALS_FILE)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4
    assert [float(r["value"]) for r in rows] == [t.value for t in study.trials]
    assert [r["params"] for r in rows] == [
        json.dumps(t.params, sort_keys=True) for t in study.trials
    ]
    _job(tmp_path, 0, ["x=0.5"], 0.5)
    write_summary(tmp_path, "val/acc", "max")
    md = (tmp_path / "summary.md").read_text()
    assert "## Every trial of the study (4, all runs on its storage)" in md
    assert f"| 1 | COMPLETE | {study.trials[1].value:.5g} | `{rows[1]['params']}` |" in md
