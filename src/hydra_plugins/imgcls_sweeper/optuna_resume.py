"""Hydra's Optuna sweeper, made to continue a study it resumes from storage.

With ``hydra.sweeper.storage`` set, a rerun loads the study (``load_if_exists``), but the stock
sweeper (hydra-optuna-sweeper 1.3, optuna 2.10) then:

- restarts its seeded sampler, so the new trials replay the first run's parameters;
- numbers the new jobs 0, 1, ... again, while the study numbers the trials on.

This subclass reseeds the sampler with ``seed + existing trials`` (a new, still reproducible
stream), numbers the jobs by the study's trial numbers, and writes ``optuna_trials.csv`` at the
sweep root: every trial of the study, from every run, in one table (the sweep summary shows it).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # no `sweep` extra (make train): Hydra's plugin scan must not warn at start
    OptunaSweeper = object  # type: ignore[misc,assignment]  # not a Plugin: Hydra skips the class

log = logging.getLogger(__name__)

TRIALS_FILE = "optuna_trials.csv"


def _load_study(storage: Any, study_name: str | None) -> Any | None:
    if not storage or not study_name:
        return None
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return None


def _make_sqlite_folder(storage: Any) -> None:
    """``sqlite:///logs/optuna/x.db``: SQLite creates the file, not its folder."""
    url = str(storage or "")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


class ResumableOptunaSweeper(OptunaSweeper):
    """``OptunaSweeper`` that continues a study loaded from storage (see the module doc)."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sampler_config = config.hydra.sweeper.get("sampler")

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        _make_sqlite_folder(impl.storage)
        study = _load_study(impl.storage, impl.study_name)
        existing = len(study.trials) if study is not None else 0
        if existing:
            impl.job_idx = existing  # job numbers = the study's trial numbers
            self._reseed(existing)
        result = impl.sweep(arguments)
        self._write_trials(Path(impl.sweep_dir))
        return result

    def _reseed(self, existing: int) -> None:
        cfg = self.sampler_config
        seed = cfg.get("seed") if cfg is not None else None
        if seed is None:
            log.info("resuming study with %d trials (sampler unseeded)", existing)
            return
        self.sweeper.sampler = instantiate(cfg, seed=int(seed) + existing)
        log.info(
            "resuming study %r with %d trials: trials numbered from %d, sampler seed %d + %d",
            self.sweeper.study_name,
            existing,
            existing,
            int(seed),
            existing,
        )

    def _write_trials(self, sweep_dir: Path) -> None:
        study = _load_study(self.sweeper.storage, self.sweeper.study_name)
        if study is None:  # in memory: this sweep's jobs are all the trials
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / TRIALS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["trial", "state", "value", "params", "started"])
            for t in study.trials:
                w.writerow(
                    [
                        t.number,
                        t.state.name,
                        "" if t.value is None else repr(float(t.value)),
                        json.dumps(t.params, sort_keys=True),
                        t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else "",
                    ]
                )
        log.info(
            "all %d trials of study %r: %s",
            len(study.trials),
            study.study_name,
            sweep_dir / TRIALS_FILE,
        )
