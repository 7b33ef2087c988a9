"""What every entry point does around its task: warnings, the run header, one-line user errors."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from imgcls.checkpointing.boundary import allow_from_config
from imgcls.data.base_datamodule import NO_TEST_SPLIT
from imgcls.errors import ConfigError, find_user_error
from imgcls.sweeps.job_process import record_job_error, run_job_process, should_isolate
from imgcls.utils.config import print_config_tree
from imgcls.utils.console import check_required, log_run_header, log_to_files, quiet_lightning
from imgcls.utils.ranks import is_rank_zero

log = logging.getLogger(__name__)


def apply_extras(cfg: DictConfig) -> None:
    """Warnings policy and config printing, done once before anything is built."""
    # In-memory tensors are fastest with 0 workers; Lightning's hint says otherwise.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # ImageClassifier logs torchmetrics results, which compute() already synced across ranks.
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    # A frozen backbone stays in eval mode on purpose (BatchNorm statistics fixed).
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")
    extras = cfg.get("extras") or {}
    allow_from_config(cfg)  # users' own classes that files may name
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    quiet_lightning()
    if is_rank_zero():
        log_run_header(cfg)
        if extras.get("print_config"):
            print_config_tree(cfg, Path(cfg.paths.output_dir) / "config_tree.log", echo=False)


def run_task(
    task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig
) -> float | list[float] | None:
    """Run an entry point's task (user errors: one message, no traceback); returns the
    ``optimized_metric`` for sweepers. A multirun job starting DDP ranks runs as its own process
    group (``imgcls.sweeps.job_process``)."""
    if in_multirun() and should_isolate(cfg):
        return _optimized_value(cfg, run_job_process(cfg))
    try:
        check_required(cfg)
        return _optimized_value(cfg, task(cfg))
    except Exception as exc:
        e = find_user_error(exc)
        record_job_error(e or exc)  # for the sweep, when this is a job's own process
        if e is None:
            raise
        if in_multirun():
            log.error("%s: %s", type(e).__name__, e)
            # the sweeper records the job as failed (with this message) and runs the others
            raise e from None
        log_to_files(f"{type(e).__name__}: {e}", logging.ERROR)  # the console shows it once
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | list[float] | None:
    """``optimized_metric``'s value; a list of names (a multi-objective search) gives a list."""
    names = cfg.get("optimized_metric")
    if not names:
        return None
    several = not isinstance(names, str)
    missing = [n for n in (names if several else [names]) if n not in metrics]
    if not missing:
        return [metrics[n] for n in names] if several else metrics[names]
    name = missing[0]
    message = f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}"
    if str(name).startswith("test/") and not any(k.startswith("test/") for k in metrics):
        message += f" ({NO_TEST_SPLIT}: set data.test_fraction, or optimize a val/* metric)"
    if in_multirun():  # a sweeper cannot rank this job
        raise ConfigError(message)
    log.warning(message)  # a single run has finished; its results stand
    return None


def in_multirun() -> bool:
    try:
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra context (tests calling tasks directly)
        return False
