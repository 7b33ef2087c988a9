"""The Optuna sweeper plugin on a tiny Hydra app (seconds per sweep): resume, failed trials,
journal storage shared by concurrent sweeps, several objectives, samplers; the storage read
back the way optuna-dashboard reads it. The train.py sweeps are in test_sweeps.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imgcls.errors import ConfigError
from tests.conftest import CONFIGS, ROOT

optuna = pytest.importorskip("optuna")

APP = """
import math, hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    if cfg.x > 4:
        raise ValueError(f"x={cfg.x} is out of range")
    loss = (cfg.x - 1) ** 2 + (0 if cfg.opt == "adam" else 0.5)
    return [loss, -abs(cfg.x)] if cfg.two else loss

main()
"""
CONFIG = f"""
defaults:
  - override hydra/sweeper: optuna
  - _self_
x: 0.0
opt: adam
two: false
hydra:
  searchpath: [file://{CONFIGS}]
  mode: MULTIRUN
  sweep:
    dir: ${{out}}
  sweeper:
    direction: minimize
    study_name: toy
    n_trials: 3
    sampler:
      seed: 7
    params:
      x: interval(-2.0, 3.0)
      opt: choice(adam, sgd)
"""


@pytest.fixture
def app(tmp_path: Path):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(CONFIG)

    def run(out: str, *overrides: str, wait: bool = True):
        cmd = [sys.executable, str(tmp_path / "app.py"), f"+out={tmp_path / out}", *overrides]
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        if not wait:
            return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    return run


def _trials(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "optuna_trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_rerun_on_storage_continues_trial_and_job_numbers(app, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'db' / 'toy.db'}"
    first = app("a", f"hydra.sweeper.storage={storage}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = app("b", f"hydra.sweeper.storage={storage}")
    assert second.returncode == 0, second.stderr[-3000:]

    # what optuna-dashboard does with the URL: list the studies, load one, read its trials
    (summary,) = optuna.get_all_study_summaries(storage)
    assert (summary.study_name, summary.n_trials) == ("toy", 6)
    study = optuna.load_study(study_name="toy", storage=storage)
    assert [t.number for t in study.trials] == list(range(6))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    # the reseeded sampler draws new parameters, not the first run's again
    assert not {t.params["x"] for t in study.trials[:3]} & {t.params["x"] for t in study.trials[3:]}
    # job dirs carry the trial numbers; each trial knows its run dir
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.name.isdigit()) == ["3", "4", "5"]
    assert study.trials[4].user_attrs["run_dir"] == str(tmp_path / "b" / "4")
    rows = _trials(tmp_path / "b")
    assert [r["trial"] for r in rows] == [str(i) for i in range(6)]
    assert [float(r["value"]) for r in rows] == [t.value for t in study.trials]
    best = OmegaConf.load(tmp_path / "b" / "optimization_results.yaml")
    assert best.best_value == study.best_value == min(t.value for t in study.trials)


def test_failed_trials_are_marked_and_the_rest_run(app, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    proc = app(
        "a",
        f"hydra.sweeper.storage={storage}",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=10",  # capped at the grid's 4 points
        "x=choice(1, 5, 2, 6)",  # the command line replaces the config's interval
        "hydra.sweeper.params.opt=adam",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="toy", storage=storage)
    states = {t.params["x"]: t.state.name for t in study.trials}
    assert states == {1: "COMPLETE", 2: "COMPLETE", 5: "FAIL", 6: "FAIL"}
    failed = next(t for t in study.trials if t.params["x"] == 5)
    assert failed.user_attrs["error"] == "ValueError: x=5 is out of range"
    assert f"trial {failed.number} failed: ValueError: x=5" in proc.stdout
    assert study.best_value == 0.0


@pytest.mark.slow
def test_journal_file_shared_by_two_concurrent_sweeps(app, tmp_path: Path) -> None:
    log_file = tmp_path / "journal" / "toy.log"
    storage = f"journal:///{log_file}"
    args = (
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
    )
    procs = [
        app(name, *args, f"hydra.sweeper.sampler.seed={seed}", wait=False)
        for name, seed in (("a", 1), ("b", 2))
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]

    # optuna-dashboard opens a journal file the same way
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(log_file)))
    study = optuna.load_study(study_name="toy", storage=journal)
    assert sorted(t.number for t in study.trials) == list(range(8))
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    for t in study.trials:  # every trial ran once, in a job dir named by its number
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.name == str(t.number) and run_dir.parent.name in ("a", "b")
    jobs = [p.name for s in ("a", "b") for p in (tmp_path / s).iterdir() if p.name.isdigit()]
    assert sorted(jobs, key=int) == [str(i) for i in range(8)]


def test_two_objectives_on_a_journal_file_give_a_pareto_front(app, tmp_path: Path) -> None:
    storage = f"journal:///{tmp_path / 'j' / 'toy.log'}"
    proc = app(
        "a",
        "two=true",
        "hydra.sweeper.direction=[minimize,maximize]",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["state"] for r in _trials(tmp_path / "a")] == ["COMPLETE"] * 4
    results = OmegaConf.load(tmp_path / "a" / "optimization_results.yaml")
    assert "best_value" not in results and len(results.solutions) >= 1
    for s in results.solutions:
        x = s.params.x
        loss = (x - 1) ** 2 + (0 if s.params.opt == "adam" else 0.5)
        assert list(s["values"]) == pytest.approx([loss, -abs(x)])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "cmaes", "gp", "nsgaii"])
def test_other_samplers_run(app, tmp_path: Path, sampler: str) -> None:
    if sampler == "gp":
        pytest.importorskip("scipy")
    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    proc = app("a", f"hydra/sweeper/sampler={sampler}", f"hydra.sweeper.storage={storage}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = {"random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler"}
    assert f"(minimize, {name.get(sampler, 'NSGAIISampler')}, " in proc.stdout
    study = optuna.load_study(study_name="toy", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(-2.0 <= t.params["x"] <= 3.0 for t in study.trials)


def test_search_space_syntax() -> None:
    from imgcls.engine.sweeps.optuna_space import parse_search_space

    space = parse_search_space(
        [
            "lr=tag(log, interval(0.001, 0.1))",
            "n=range(1, 11, 3)",
            "w=choice([6,16], [12,32])",
            "a=1",
            "n=range(2, 5)",
        ]  # fmt: skip
    )
    lr, n, w = (space.distributions[k] for k in ("lr", "n", "w"))
    assert (lr.low, lr.high, lr.log) == (0.001, 0.1, True)
    assert (n.low, n.high, n.step) == (2, 4, 1)  # the later override wins; stop excluded
    assert w.choices == ("[6,16]", "[12,32]")
    assert space.fixed == {"a": "a=1"}
    with pytest.raises(ConfigError, match=r"params.lr: GridSampler needs discrete values"):
        space.grid()
