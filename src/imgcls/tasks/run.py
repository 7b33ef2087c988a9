"""What every entry point does around its task: warnings, the run header, one-line user errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from imgcls.data.base_datamodule import NO_TEST_SPLIT
from imgcls.engine.boundary import allow_from_config
from imgcls.errors import ConfigError, find_user_error
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
    group (``imgcls.engine.sweeps.job_process``)."""
    if in_multirun():
        from imgcls.engine.sweeps.job_process import run_job_process, should_isolate

        if should_isolate(cfg):
            return _optimized_value(cfg, run_job_process(cfg))
    try:
        check_required(cfg)
        return _optimized_value(cfg, task(cfg))
    except Exception as exc:
        record_for_job_process(exc)  # names the user error behind it, if any
        e = find_user_error(exc)
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


def record_for_job_process(exc: BaseException) -> None:
    """In a sweep's DDP job run as its own process (``imgcls.engine.sweeps.job_process``): keep
    the first error (the user error behind ``exc`` when there is one) for the sweep to report.
    A single run imports nothing of the sweeps."""
    if os.environ.get("IMGCLS_JOB_ERROR_FILE"):  # job_process.ERROR_FILE_ENV
        from imgcls.engine.sweeps.job_process import record_job_error

        record_job_error(find_user_error(exc) or exc)


@contextlib.contextmanager
def stop_ranks_on_error(trainer: Any) -> Iterator[None]:
    """When rank 0 fails, end the rank processes it started (they would wait for it forever):
    Lightning does so for Ctrl+C only (SIGTERM stops every rank by itself)."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        # recorded first: the observer may SIGKILL this process once a rank it watches died
        record_for_job_process(exc)
        for proc in getattr(trainer.strategy.launcher, "procs", None) or []:
            if proc.poll() is None:
                log.warning("stopping DDP rank process %d (rank 0 failed)", proc.pid)
                proc.kill()
        raise
