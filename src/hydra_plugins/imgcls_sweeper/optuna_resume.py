"""Hydra's Optuna sweeper, made to continue a study it resumes from storage.

With ``hydra.sweeper.storage`` set, the stock sweeper (hydra-optuna-sweeper 1.3, optuna 2.10)
loads the study but restarts its seeded sampler (new trials replay the first run's parameters)
and numbers jobs from 0 again. This subclass reseeds with ``seed + existing trials``, numbers jobs
by trial number, and writes every trial of the study to ``optuna_trials.csv`` at the sweep root."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from imgcls.sweeps.jobs import TRIALS_FILE
from imgcls.utils.files import atomic_write_text

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # no `sweep` extra (make train): Hydra's plugin scan must not warn at start
    OptunaSweeper = object  # type: ignore[misc,assignment]  # not a Plugin: Hydra skips the class

log = logging.getLogger(__name__)


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


def trials_table(study: Any) -> pd.DataFrame:
    """Optuna's ``trials_dataframe`` as our columns: trial, state, value, params (JSON), started."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start"))
    return pd.DataFrame(
        {
            "trial": df["number"],
            "state": df["state"],
            "value": [repr(float(v)) if pd.notna(v) else "" for v in df["value"]],
            # the frame's params_* columns would turn an int drawn by some trials only into float
            "params": [json.dumps(t.params, sort_keys=True) for t in study.trials],
            "started": [
                d.isoformat(timespec="seconds") if pd.notna(d) else "" for d in df["datetime_start"]
            ],
        }
    )


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
        impl.sweep(arguments)
        study = _load_study(impl.storage, impl.study_name)
        if study is not None and study.trials:  # in memory: this sweep's jobs are all the trials
            path = Path(impl.sweep_dir) / TRIALS_FILE
            atomic_write_text(path, trials_table(study).to_csv(index=False, lineterminator="\n"))
            log.info("all %d trials of study %r: %s", len(study.trials), study.study_name, path)

    def _reseed(self, existing: int) -> None:
        cfg = self.sampler_config
        seed = cfg.get("seed") if cfg is not None else None
        if seed is None:
            log.info("resuming study with %d trials (sampler unseeded)", existing)
            return
        self.sweeper.sampler = instantiate(cfg, seed=int(seed) + existing)
        msg = "resuming study %r after trial %d: sampler seed %d + %d trials"
        log.info(msg, self.sweeper.study_name, existing - 1, int(seed), existing)
