"""Optuna pruning for trials the launcher runs in this process (Hydra's basic launcher).

The sweeper puts its trials here by job number before it launches them; the callback of a job
finds its own trial and reports ``monitor`` after each validation. Jobs in other processes
(submitit, SLURM, DDP jobs) find none and train to the end: pruning needs the trial object.
Optuna is imported only when a trial is running (a single run never loads it)."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

import lightning as L

log = logging.getLogger(__name__)

TRIALS: dict[int, Any] = {}  # job number -> optuna.Trial, set by the sweeper


def job_trial() -> Any | None:
    """The Optuna trial of the Hydra job running in this process, if the sweeper left one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        num = cast(Any, HydraConfig.get()).job.get("num")
    except ValueError:  # no Hydra context
        return None
    return TRIALS.get(int(num)) if num is not None else None


class OptunaPruning(L.Callback):
    """Reports ``monitor`` to the job's trial each epoch; ``optuna.TrialPruned`` when the
    sweeper's pruner says so (the sweeper records the trial as PRUNED, not failed)."""

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self.trial: Any | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trial = job_trial()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = trainer.callback_metrics.get(self.monitor)
        if self.trial is None or trainer.sanity_checking or metric is None:
            return
        epoch, value = trainer.current_epoch, float(metric)
        if not math.isfinite(value):
            return  # the trial fails on its own (NaN loss); nothing to compare
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            import optuna

            message = (
                f"trial {self.trial.number} pruned at epoch {epoch} ({self.monitor}={value:.4g})"
            )
            log.info(message)
            raise optuna.TrialPruned(message)
