"""The Hydra callback that keeps a sweep's record: each job's status file, and after each job
and at the end the summary tables and ``report.html`` at the sweep root."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from imgcls.engine.sweeps.jobs import is_pruned, write_job_status
from imgcls.engine.sweeps.report import write_sweep_report
from imgcls.engine.sweeps.summary import (
    Summary,
    first_metric,
    metric_mode,
    seeds_to_csv,
    summarize,
    to_csv,
    to_markdown,
)
from imgcls.errors import UserError
from imgcls.utils.files import atomic_write_text
from imgcls.utils.ranks import is_rank_zero

log = logging.getLogger(__name__)


def write_summary(sweep_dir: Path, metric: str | None, mode: str) -> Summary:
    """``summary.csv``, ``summary.md`` (and ``summary_seeds.csv``), ``report.html`` at the sweep
    root; jobs on other machines refresh the same files, hence atomic writes."""
    summary = summarize(Path(sweep_dir), metric, mode)
    atomic_write_text(summary.sweep_dir / "summary.csv", to_csv(summary))
    atomic_write_text(summary.sweep_dir / "summary.md", to_markdown(summary))
    if summary.has_seed_repeats:
        atomic_write_text(summary.sweep_dir / "summary_seeds.csv", seeds_to_csv(summary))
    try:
        write_sweep_report(summary)
    except Exception as e:  # the tables above stand without the page
        log.warning("sweep report.html not written (%s: %s)", type(e).__name__, e)
    return summary


class SweepSummary(Callback):
    """Hydra callback: job status files, the table refreshed after each job (``refresh_each_job``),
    exit 1 at the end of a sweep in which a job failed (``fail_on_job_failure``)."""

    def __init__(self, refresh_each_job: bool = True, fail_on_job_failure: bool = True) -> None:
        self.refresh_each_job = refresh_each_job
        self.fail_on_job_failure = fail_on_job_failure

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not is_rank_zero():
            return
        error = job_return._return_value if job_return.status != JobStatus.COMPLETED else None
        if error is not None and not isinstance(error, UserError) and not is_pruned(error):
            # Hydra keeps the exception but prints nothing: put the traceback in the job's log.
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            log.error("job %s failed:\n%s", config.hydra.job.num, trace)
        write_job_status(config, job_return)
        if self.refresh_each_job:
            try:
                metric = first_metric(config)
                write_summary(Path(config.hydra.sweep.dir), metric, metric_mode(config, metric))
            except Exception as e:  # the table is a convenience; never fail a job for it
                log.warning("could not refresh the sweep summary: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        metric = first_metric(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        summary = write_summary(sweep_dir, metric, metric_mode(config, metric))
        log.info("sweep summary: %s (and summary.csv)", sweep_dir / "summary.md")
        for line in to_markdown(summary).splitlines():
            if line.startswith(("- ", "|")):
                log.info("%s", line)
        if summary.failed and self.fail_on_job_failure:
            nums = ", ".join(str(j.num) for j in summary.failed)
            failed = f"{len(summary.failed)} of {len(summary.jobs)} jobs failed (job {nums})"
            raise SystemExit(f"error: {failed}; see {sweep_dir / 'summary.md'}")
