"""Experiment trackers (MLflow, W&B) closed at the end of a task, so their files are complete."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


@rank_zero_only
def finish_trackers(loggers: list[Any]) -> None:
    """End the W&B run (Lightning's ``finalize`` leaves it open, so the offline run dir would
    lack its summary until the process exits); MLflow runs Lightning already ends per stage."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None):
            run_dir = logger.experiment.dir
            logger.experiment.finish()
            log.info("wandb run finished: %s", run_dir)
