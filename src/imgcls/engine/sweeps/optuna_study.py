"""The Optuna search behind ``hydra/sweeper=optuna``: ask a batch of trials, launch them as Hydra
jobs numbered by trial number, tell each outcome (COMPLETE, PRUNED, FAIL), repeat. A study on
storage continues where the last run stopped: trial and job numbers go on, the seeded sampler
is reseeded with ``seed + trials so far`` (new parameters, reproducible)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import ListConfig, OmegaConf

from imgcls.engine.sweeps import pruning
from imgcls.engine.sweeps.jobs import TRIALS_FILE
from imgcls.engine.sweeps.optuna_space import SearchSpace, parse_search_space, suggest
from imgcls.errors import ConfigError
from imgcls.utils.files import atomic_write_text

log = logging.getLogger(__name__)
State = optuna.trial.TrialState
JOURNAL = "journal:///"


def open_storage(url: Any) -> Any:
    """``None``: in memory; ``journal:///<file>``: a journal file (``journal:////abs/x.log`` is
    absolute, like ``sqlite:////abs/x.db``) that many processes and nodes share through file
    locks; any other URL: an RDB storage (``sqlite:///``, ``postgresql://``, ``mysql://``)."""
    if not url:
        return None
    url = str(url)
    path = url[len(JOURNAL) :] if url.startswith(JOURNAL) else url[len("sqlite:///") :]
    if url.startswith((JOURNAL, "sqlite:///")) and path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # the database makes no folders
    if not url.startswith(JOURNAL):
        return url
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(path))


def directions(direction: Any) -> list[Any]:
    items = list(direction) if isinstance(direction, (list, ListConfig)) else [direction]
    for d in items:
        if str(d) not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction: {d!r} is not maximize or minimize")
    return [str(d) for d in items]


def trial_values(ret: JobReturn, n_objectives: int) -> list[float] | None:
    """The job's ``optimized_metric`` value(s), or None when it cannot rank the trial."""
    value = ret._return_value
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    ok = len(values) == n_objectives and all(math.isfinite(v) for v in values)
    return values if ok else None


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any = None, state: Any = None) -> str:
    try:
        return study.tell(trial, values, state=state).state.name
    except RuntimeError as e:  # GridSampler stops the study after its last point; the trial's
        if "Study.stop" not in str(e):  # state is stored all the same
            raise
        return (state or State.COMPLETE).name


def tell(study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n_objectives: int) -> str:
    """Record a finished job as its trial's outcome; returns the state's name."""
    error = ret._return_value if ret.status != JobStatus.COMPLETED else None
    if isinstance(error, optuna.TrialPruned):
        return _tell(study, trial, state=State.PRUNED)
    values = trial_values(ret, n_objectives) if error is None else None
    if values is not None:
        return _tell(study, trial, values)
    why = (
        f"{type(error).__name__}: {error}"
        if error is not None
        else f"returned {ret._return_value!r}, not {n_objectives} finite number(s): "
        f"set optimized_metric to as many logged metrics as hydra.sweeper.direction has"
    )
    why = (why.splitlines() or [""])[0]
    trial.set_user_attr("error", why)
    log.warning("trial %d failed: %s", trial.number, why)
    return _tell(study, trial, state=State.FAIL)


def consecutive(trials: Sequence[optuna.Trial]) -> list[list[optuna.Trial]]:
    """Runs of consecutive trial numbers: each is one launch (job number = trial number);
    another process on the same storage can take the numbers in between."""
    runs: list[list[optuna.Trial]] = []
    for t in trials:
        if runs and runs[-1][-1].number + 1 == t.number:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def trials_table(study: optuna.Study) -> str:
    """CSV of every trial on the storage: trial, state, value (the first objective), values,
    params (JSON), started."""
    import pandas as pd

    rows = [
        {
            "trial": t.number,
            "state": t.state.name,
            "value": repr(float(t.values[0])) if t.values else "",
            "values": json.dumps(t.values) if t.values else "",
            "params": json.dumps(t.params, sort_keys=True),
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else "",
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n")


def results(study: optuna.Study) -> dict[str, Any]:
    """``optimization_results.yaml``: the best trial, or the Pareto front of several objectives."""
    done = study.get_trials(deepcopy=False, states=(State.COMPLETE,))
    if not done:
        return {"name": "optuna", "best_params": {}, "best_value": None}
    if len(study.directions) == 1:
        best = study.best_trial
        return {"name": "optuna", "best_params": best.params, "best_value": best.value}
    front = [{"trial": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
    return {"name": "optuna", "solutions": front}


class OptunaSearch:
    """One ``sweep()`` of the plugin (``hydra_plugins.imgcls_sweeper.optuna_sweeper``)."""

    def __init__(self, sweeper: Any, arguments: list[str]) -> None:
        self.sweeper, self.config, self.launcher = sweeper, sweeper.config, sweeper.launcher
        params = sweeper.params or {}
        self.space: SearchSpace = parse_search_space(
            [*(f"{k}={v}" for k, v in params.items()), *arguments]
        )
        self.directions = directions(sweeper.direction)
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.storage = open_storage(sweeper.storage)
        # trials run in this process can be pruned: the job's callback finds its trial (Optuna
        # prunes single-objective studies only)
        in_process = type(self.launcher).__name__ == "BasicLauncher"
        self.prunable = in_process and len(self.directions) == 1

    def sampler(self, existing: int) -> Any:
        cfg = self.sweeper.sampler
        seed = cfg.get("seed") if cfg is not None else None
        if existing and seed is not None:  # seed + trials so far: no replay of the first run
            log.info("resuming after %d trials: sampler seed %d + %d", existing, seed, existing)
            seed = int(seed) + existing
        sampler = instantiate(cfg, seed=seed) if cfg is not None else None
        if callable(sampler) and not isinstance(sampler, optuna.samplers.BaseSampler):
            sampler = sampler(search_space=self.space.grid())  # GridSampler (_partial_)
        return sampler

    def study(self) -> optuna.Study:
        name = self.sweeper.study_name
        existing = 0
        if self.storage is not None and name:
            with contextlib.suppress(KeyError):  # KeyError: a new study
                existing = len(optuna.load_study(study_name=name, storage=self.storage).trials)
        return optuna.create_study(
            study_name=name,
            storage=self.storage,
            sampler=self.sampler(existing),
            pruner=instantiate(self.sweeper.pruner) if self.sweeper.pruner else None,
            directions=self.directions,
            load_if_exists=True,
        )

    def run(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say it in Hydra's log
        study = self.study()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        n_trials = self.sweeper.n_trials
        if isinstance(study.sampler, optuna.samplers.GridSampler):
            n_trials = min(n_trials, math.prod(len(v) for v in self.space.grid().values()))
        log.info(
            "study %r (%s, %s, %s): %d trial(s) on %s, %d before",
            study.study_name,
            "/".join(self.directions),
            type(study.sampler).__name__,
            type(study.pruner).__name__,
            n_trials,
            self.sweeper.storage or "memory",
            len(study.trials),
        )
        done = failed = 0
        while done < n_trials:
            batch = [study.ask() for _ in range(min(self.sweeper.n_jobs, n_trials - done))]
            states = self.launch(study, batch)
            done += len(batch)
            failed += states.count("FAIL")
            self.write_results(study)
            if failed / done > self.sweeper.max_failure_rate:
                log.error("%d of %d trials failed: stopping (max_failure_rate)", failed, done)
                break

    def launch(self, study: optuna.Study, batch: list[optuna.Trial]) -> list[str]:
        states = []
        for run in consecutive(batch):
            overrides = [tuple(suggest(t, self.space)) for t in run]
            if self.prunable:
                pruning.TRIALS.update({t.number: t for t in run})
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=run[0].number)
            except BaseException:  # Ctrl+C, a bad override: no trial stays RUNNING on storage
                for t in run:
                    if study._storage.get_trial(t._trial_id).state == State.RUNNING:
                        _tell(study, t, state=State.FAIL)
                raise
            finally:
                for t in run:
                    pruning.TRIALS.pop(t.number, None)
            for trial, ret in zip(run, returns, strict=True):
                cfg = ret.hydra_cfg
                run_dir = OmegaConf.select(cfg, "hydra.runtime.output_dir") if cfg else None
                if run_dir:  # the dashboard shows it beside the trial
                    trial.set_user_attr("run_dir", str(run_dir))
                states.append(tell(study, trial, ret, len(self.directions)))
                values = study._storage.get_trial(trial._trial_id).values
                log.info("trial %d %s %s %s", trial.number, states[-1], values or "", trial.params)
        return states

    def write_results(self, study: optuna.Study) -> None:
        """After every batch: a sweep killed half-way keeps what it found."""
        out = self.sweep_dir / "optimization_results.yaml"
        atomic_write_text(out, OmegaConf.to_yaml(OmegaConf.create(results(study))))
        if self.storage is not None:  # in memory, this sweep's jobs are all the trials
            atomic_write_text(self.sweep_dir / TRIALS_FILE, trials_table(study))
