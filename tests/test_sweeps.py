"""Multiruns as a user runs them: a failing job, an Optuna search, the submitit launcher."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imgcls.tasks.run import run_task
from imgcls.tasks.train import train
from tests.conftest import ROOT, run_entry, tiny

# every job: 3 training steps; jobs keep the diagnostics callback
TINY = tiny("data.val_size=200", train_batches=3, logger="csv", diagnostics=True)
# submitit workers import the package by name: make them import this checkout
ENV = {"PYTHONPATH": str(ROOT / "src")}


def _sweep_dir(log_dir: Path) -> Path:
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metric(job_dir: Path, name: str = "val/acc_best") -> float:
    return json.loads((job_dir / "metrics.json").read_text())["metrics"][name]


def test_failing_job_does_not_stop_the_grid(tmp_path: Path) -> None:
    # kernel 15 leaves LeNet's second conv a 7x7 input: a ConfigError at model build
    proc = run_entry(
        "train", "-m", "model.net.kernel_size=3,5,7,15", *TINY, f"paths.log_dir={tmp_path}"
    )

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: 1 of 4 jobs failed (job 3)" in proc.stderr
    sweep = _sweep_dir(tmp_path)
    rows = _rows(sweep / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"),
        ("1", "completed"),
        ("2", "completed"),
        ("3", "failed"),
    ]
    assert rows[3]["error"].startswith(
        "ConfigError: lenet: input 1x28x28 is too small for this net"
    )
    assert "model.net.kernel_size=15" in rows[3]["overrides"].split()
    assert not (sweep / "3" / "metrics.json").exists()
    values = [_metric(sweep / r["job"]) for r in rows[:3]]
    assert [float(r["optimized_metric"]) for r in rows[:3]] == values  # exactly the jobs' values
    assert rows[3]["optimized_metric"] == ""
    best = max(range(3), key=lambda i: values[i])
    assert [r["best"] for r in rows] == ["1" if i == best else "0" for i in range(4)]
    assert [Path(r["run_dir"]) for r in rows] == [sweep / str(i) for i in range(4)]
    md = (sweep / "summary.md").read_text()
    assert f"| {best} ★ | completed |" in md
    assert "- jobs: 4, completed 3, failed 1" in md


def test_single_run_config_error_is_one_line(make_cfg, capsys) -> None:
    cfg = make_cfg("train", ["model.net.kernel_size=15"])
    with pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: lenet: input 1x28x28 is too small for this net")
    assert "(data.image_size=[64,64]) or choose a net without this limit (model=mlp)" in err
    assert "Traceback" not in err


def test_optuna_search_reports_best_value_and_params(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = run_entry(
        "train",
        "hparams_search=mnist_optuna",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweeper.storage={storage}",
        *TINY,
        f"paths.log_dir={tmp_path}",
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    rows = _rows(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["completed"] * 4
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    values = {r["job"]: float(r["optimized_metric"]) for r in rows}
    assert values == {r["job"]: _metric(Path(r["run_dir"])) for r in rows}  # exactly
    assert results.best_value == max(values.values())
    best = next(r for r in rows if r["best"] == "1")
    assert float(best["optimized_metric"]) == results.best_value
    # the best job ran with Optuna's best parameters, drawn from the search space
    params = dict(results.best_params)
    assert set(params) == {
        "model.optimizer.lr",
        "data.batch_size",
        "model.net.channels",
        "model.net.hidden",
    }
    assert 0.001 <= params["model.optimizer.lr"] <= 0.05
    assert params["data.batch_size"] in (32, 64, 128, 256)
    best_cfg = OmegaConf.load(Path(best["run_dir"]) / ".hydra" / "config.yaml")
    assert best_cfg.data.batch_size == params["data.batch_size"]
    assert str(list(best_cfg.model.net.channels)).replace(" ", "") == params["model.net.channels"]
    md = (sweep / "summary.md").read_text()
    assert f"Optuna best value: {results.best_value:.5g}" in md

    # the study persisted: 4 finished trials in the SQLite file
    import optuna

    study = optuna.load_study(study_name="mnist_optuna", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


@pytest.mark.slow
def test_optuna_search_resumes_from_sqlite(tmp_path: Path) -> None:
    """A rerun on the same storage continues the study: new trial numbers (job dirs too), new
    parameters (the seeded sampler does not replay), one table of every trial."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["hparams_search=mnist_optuna", f"hydra.sweeper.storage={storage}", *TINY]
    first = run_entry("train", *args, "hydra.sweeper.n_trials=2", f"paths.log_dir={tmp_path}/a")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_entry("train", *args, "hydra.sweeper.n_trials=2", f"paths.log_dir={tmp_path}/b")
    assert second.returncode == 0, second.stderr[-3000:]

    import optuna

    study = optuna.load_study(study_name="mnist_optuna", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    first_params = [t.params for t in study.trials[:2]]
    second_params = [t.params for t in study.trials[2:]]
    assert not any(p in first_params for p in second_params), (first_params, second_params)
    sweep_b = _sweep_dir(tmp_path / "b")
    assert sorted(r["job"] for r in _rows(sweep_b / "summary.csv")) == ["2", "3"]
    assert sorted(p.name for p in sweep_b.iterdir() if p.name.isdigit()) == ["2", "3"]
    trials = _rows(sweep_b / "optuna_trials.csv")
    assert [r["trial"] for r in trials] == ["0", "1", "2", "3"]
    assert [json.loads(r["params"]) for r in trials] == first_params + second_params
    assert [float(r["value"]) for r in trials] == [t.value for t in study.trials]
    assert [r["state"] for r in trials] == ["COMPLETE"] * 4
    md = (sweep_b / "summary.md").read_text()
    assert "## Every trial of the study (4, all runs on its storage)" in md
    # searched parameters are per-trial values, never "overrides of every job"
    common = next(line for line in md.splitlines() if line.startswith("- overrides of every job"))
    assert "model.optimizer.lr" not in common and "model.net.hidden" not in common
    results = OmegaConf.load(sweep_b / "optimization_results.yaml")
    assert results.best_value == study.best_value  # best over both runs


@pytest.mark.slow
def test_submitit_local_launcher_runs_seed_repeats(tmp_path: Path) -> None:
    proc = run_entry(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        "seed=1,2",
        *TINY,
        f"paths.log_dir={tmp_path}",
        env=ENV,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    # each job ran in its own submitit worker process, which kept a log
    logs = sorted(p.name for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    values = [_metric(sweep / job) for job in ("0", "1")]
    assert [float(r["optimized_metric"]) for r in _rows(sweep / "summary.csv")] == values
    (group,) = _rows(sweep / "summary_seeds.csv")
    assert (group["n"], group["failed"], group["jobs"]) == ("2", "0", "0 1")
    assert float(group["mean"]) == pytest.approx(sum(values) / 2)
    assert float(group["std"]) == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert "## Per configuration (seed repeats: mean ± std)" in (sweep / "summary.md").read_text()


def test_slurm_launcher_config_makes_one_task_per_rank(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor

    cfg = make_cfg(
        "train",
        [
            "hydra/launcher=submitit_slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
        ],
    )
    launcher = instantiate(cfg.hydra.launcher)
    # What SlurmLauncher.launch does with its parameters, minus the submission (no cluster here).
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        folder=str(tmp_path / "submitit"),
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m job", "1")

    for line in [
        "#SBATCH --nodes=2",  # trainer.num_nodes
        "#SBATCH --ntasks-per-node=4",  # trainer.devices: one task per rank
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@120",  # time to checkpoint before a timeout/preemption kill
        "#SBATCH --time=240",
    ]:
        assert line in sbatch.splitlines()
    assert executor._executor.max_num_timeout == 3  # a timed-out job is requeued


@pytest.mark.slow
def test_optuna_prunes_a_lagging_trial_in_process(tmp_path: Path) -> None:
    """The pruning callback reports val/acc to the trial the sweeper launched in this process;
    a trial below the pruner's threshold stops after its first epoch and counts as pruned."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = run_entry(
        "train",
        "-m",
        "hparams_search=mnist_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.params=null",
        "model.optimizer.lr=choice(0.01, 1e-7)",
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "~hydra.sweeper.pruner.n_startup_trials",
        "+hydra.sweeper.pruner.lower=0.5",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        *tiny("data.val_size=200", epochs=2, train_batches=30, logger="csv", diagnostics=True),
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="mnist_optuna", storage=storage)
    by_lr = {t.params["model.optimizer.lr"]: t for t in study.trials}
    bad, good = by_lr[1e-7], by_lr[0.01]
    assert bad.state.name == "PRUNED" and list(bad.intermediate_values) == [0]
    assert bad.intermediate_values[0] < 0.5
    assert good.state.name == "COMPLETE" and sorted(good.intermediate_values) == [0, 1]
    sweep = _sweep_dir(tmp_path)
    rows = {r["job"]: r for r in _rows(sweep / "summary.csv")}
    assert rows[str(bad.number)]["status"] == "pruned"
    assert not (sweep / str(bad.number) / "metrics.json").exists()  # stopped before testing
    assert "pruned 1, failed 0" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_optuna_two_objectives_with_train(tmp_path: Path) -> None:
    """optimized_metric as a list: each job returns both values (pruning stays off: Optuna prunes
    single-objective studies only), optimization_results.yaml holds the Pareto front."""
    proc = run_entry(
        "train",
        "hparams_search=mnist_optuna",
        "optimized_metric=[val/acc_best,val/loss]",
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.n_trials=2",
        *TINY,
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    front = OmegaConf.load(sweep / "optimization_results.yaml").solutions
    for s in front:
        job = sweep / str(s.trial)
        assert list(s["values"]) == [_metric(job), _metric(job, "val/loss")]
    assert "- Optuna Pareto front: trial(s)" in (sweep / "summary.md").read_text()
