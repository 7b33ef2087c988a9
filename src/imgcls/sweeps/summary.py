"""One table per sweep: every job's status, overrides and ``optimized_metric``, best job marked.

A Hydra callback (registered in ``configs/hydra/default.yaml``) does the bookkeeping:

- at the end of every multirun job, wherever the job ran (this process, a submitit worker,
  a SLURM node), it writes ``<job dir>/job_status.json`` and refreshes the sweep's summary,
  so a sweep that dies half-way still leaves a table of the jobs that finished;
- at the end of the multirun, it writes the final ``summary.csv`` and ``summary.md`` at the
  sweep root (seed repeats as mean ± std per configuration, Optuna's best trial), and makes
  the command exit non-zero when a job failed.

The table is built from files only, so it is the same whichever launcher ran the jobs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from imgcls.errors import UserError
from imgcls.utils.ranks import is_rank_zero

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"
# repeat dimensions: jobs differing only by these are one configuration (mean ± std over them)
SEED_KEYS = ("seed", "data.fold")
REPEAT_NAMES = {"seed": "seed repeats", "data.fold": "folds"}


@dataclass
class JobRecord:
    """One job of a sweep, as read back from its directory."""

    num: int | None
    status: str  # completed | failed | incomplete (no status file: still running or killed)
    overrides: list[str]
    value: float | None
    run_dir: str
    error: str = ""
    best: bool = False
    note: str = ""  # e.g. "no labeled test split" (metrics.json's "test"): why test/* is empty


@dataclass
class ConfigGroup:
    """Jobs that differ only by their seed."""

    overrides: list[str]
    jobs: list[JobRecord] = field(default_factory=list)
    best: bool = False

    @property
    def values(self) -> list[float]:
        return [v for j in self.jobs if (v := _score(j)) is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def failed(self) -> int:
        return sum(j.status != "completed" for j in self.jobs)


@dataclass
class Summary:
    """Everything written at the sweep root."""

    sweep_dir: Path
    metric: str | None
    mode: str  # max | min
    jobs: list[JobRecord]
    groups: list[ConfigGroup]
    optuna: dict[str, Any] | None = None
    # every trial of a study resumed from storage (optuna_trials.csv), and the searched keys
    trials: list[dict[str, str]] = field(default_factory=list)
    searched: set[str] = field(default_factory=set)

    @property
    def failed(self) -> list[JobRecord]:
        return [j for j in self.jobs if j.status != "completed"]

    @property
    def best(self) -> JobRecord | None:
        return next((j for j in self.jobs if j.best), None)

    @property
    def has_seed_repeats(self) -> bool:
        return any(len(g.jobs) > 1 for g in self.groups)

    @property
    def repeat_label(self) -> str:
        """What the repeats are, e.g. ``folds`` or ``seed repeats, folds`` (the keys that vary)."""
        varying = {
            k
            for j in self.jobs
            for o in j.overrides
            if (k := o.lstrip("+~").split("=", 1)[0]) in SEED_KEYS
        }
        return ", ".join(REPEAT_NAMES[k] for k in SEED_KEYS if k in varying) or "seed repeats"


def _score(job: JobRecord) -> float | None:
    """The job's metric when it counts (completed, finite), else ``None``."""
    v = job.value
    return v if job.status == "completed" and v is not None and math.isfinite(v) else None


def metric_mode(config: DictConfig, metric: str | None) -> str:
    """``max`` or ``min``: the sweeper's direction when it has one, else guessed from the name."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if isinstance(direction, str):
        return "min" if direction.lower().startswith("min") else "max"
    name = (metric or "").lower()
    return "min" if any(k in name for k in ("loss", "err", "perplexity")) else "max"


# -- per job -----------------------------------------------------------------------------------
def describe_error(error: BaseException) -> str:
    """``Type: message`` of a job's error; a job run as its own process names its rank's error."""
    description = getattr(error, "description", None)
    if isinstance(description, str) and description:
        return description
    return f"{type(error).__name__}: {error}"


def write_job_status(config: DictConfig, job_return: JobReturn) -> Path:
    """Record a finished job in its own directory (read back by :func:`collect_jobs`)."""
    out = Path(str(config.hydra.runtime.output_dir))
    ok = job_return.status == JobStatus.COMPLETED
    value = job_return._return_value if ok else None
    error = job_return._return_value if not ok else None
    status = {
        "num": int(config.hydra.job.num),
        "status": "completed" if ok else "failed",
        "overrides": list(job_return.overrides or []),
        "value": float(value) if isinstance(value, (int, float)) else None,
        "error": describe_error(error) if error is not None else "",
        "run_dir": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / STATUS_FILE, json.dumps(status, indent=2))
    return out / STATUS_FILE


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.load(path)]


def _read_metric(job_dir: Path, metric: str | None) -> float | None:
    path = job_dir / "metrics.json"
    if not metric or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("metrics", {}).get(metric)
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _read_test_note(job_dir: Path) -> str:
    """metrics.json's ``test`` note (``"no labeled test split"``), or ``""``."""
    try:
        note = json.loads((job_dir / "metrics.json").read_text()).get("test", "")
    except (OSError, ValueError):
        return ""
    return note if isinstance(note, str) else ""


def _value_cell(job: JobRecord, metric: str | None) -> str:
    """The job's metric, or why a ``test/*`` metric has no value."""
    if job.value is None and job.note and str(metric or "").startswith("test/"):
        return job.note
    return _fmt(job.value)


def collect_jobs(sweep_dir: Path, metric: str | None = None) -> list[JobRecord]:
    """Read every job directory of a sweep (one with a status file or a saved Hydra config)."""
    jobs: list[JobRecord] = []
    for d in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        status_file = d / STATUS_FILE
        if status_file.is_file():
            try:
                s = json.loads(status_file.read_text())
            except (OSError, ValueError):  # being written by a job right now
                continue
            value = s.get("value")
            if value is None and s.get("status") == "completed":
                value = _read_metric(d, metric)
            jobs.append(
                JobRecord(
                    num=s.get("num"),
                    status=s.get("status", "failed"),
                    overrides=list(s.get("overrides", [])),
                    value=value,
                    run_dir=str(d),
                    error=s.get("error", ""),
                    note=_read_test_note(d),
                )
            )
        elif (d / ".hydra" / "overrides.yaml").is_file():
            jobs.append(
                JobRecord(
                    num=int(d.name) if d.name.isdigit() else None,
                    status="incomplete",
                    overrides=_read_overrides(d),
                    value=None,
                    run_dir=str(d),
                    error="no job_status.json: the job is still running or was killed",
                )
            )
    jobs.sort(key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.run_dir))
    return jobs


# -- per sweep ---------------------------------------------------------------------------------
def _config_key(overrides: list[str]) -> tuple[str, ...]:
    def is_seed(o: str) -> bool:
        return o.lstrip("+~").split("=", 1)[0] in SEED_KEYS

    return tuple(o for o in overrides if not is_seed(o))


def group_by_config(jobs: list[JobRecord]) -> list[ConfigGroup]:
    """Group jobs whose overrides are equal but for the seed, in order of first appearance."""
    groups: dict[tuple[str, ...], ConfigGroup] = {}
    for job in jobs:
        key = _config_key(job.overrides)
        groups.setdefault(key, ConfigGroup(overrides=list(key))).jobs.append(job)
    return list(groups.values())


def summarize(sweep_dir: Path, metric: str | None, mode: str) -> Summary:
    """Collect the jobs of ``sweep_dir`` and mark the best job and configuration."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir, metric)
    sign = 1.0 if mode == "max" else -1.0
    scored = [(v, j) for j in jobs if (v := _score(j)) is not None]
    if scored:
        max(scored, key=lambda t: sign * t[0])[1].best = True
    groups = group_by_config(jobs)
    means = [(m, g) for g in groups if (m := g.mean) is not None]
    if means:
        max(means, key=lambda t: sign * t[0])[1].best = True
    optuna: dict[str, Any] | None = None
    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(results))
        optuna = {str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else None
    return Summary(
        sweep_dir, metric, mode, jobs, groups, optuna, _read_trials(sweep_dir), _searched(sweep_dir)
    )


def _read_trials(sweep_dir: Path) -> list[dict[str, str]]:
    path = sweep_dir / "optuna_trials.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _searched(sweep_dir: Path) -> set[str]:
    """Keys a sweeper searches over (``hydra.sweeper.params`` with a choice/range/interval):
    per-job values, never "overrides of every job" even when the trials drew one value."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return set()
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None) or {}
    return {str(k) for k, v in params.items() if any(c in str(v) for c in "(,")}


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.5g}"


def _common_overrides(
    jobs: list[JobRecord], searched: set[str] | None = None
) -> tuple[list[str], set[str]]:
    """Overrides shared by every job (shown once) and the ones that vary (shown per row).

    A searched parameter stays per row even when every trial drew the same value.
    """
    if not jobs:
        return [], set()

    def key(o: str) -> str:
        return o.lstrip("+~").split("=", 1)[0]

    common = [
        o
        for o in jobs[0].overrides
        if all(o in j.overrides for j in jobs[1:]) and key(o) not in (searched or set())
    ]
    return common, set(common)


def to_csv(summary: Summary) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["job", "status", "best", "optimized_metric", "overrides", "run_dir", "error"])
    for j in summary.jobs:
        w.writerow(
            [
                "" if j.num is None else j.num,
                j.status,
                int(j.best),
                (j.note if str(summary.metric or "").startswith("test/") else "")
                if j.value is None
                else repr(float(j.value)),
                " ".join(j.overrides),
                j.run_dir,
                j.error,
            ]
        )
    return buf.getvalue()


def seeds_to_csv(summary: Summary) -> str:
    """One row per configuration: n, failed, mean and std (ddof 1) over its seeds/folds."""
    rows = [
        {
            "configuration": " ".join(g.overrides),
            "value": _score(j),
            "failed": int(j.status != "completed"),
            "best": int(g.best),
            "job": str(j.num),
        }
        for g in summary.groups
        for j in g.jobs
    ]
    if not rows:
        return "configuration,n,failed,mean,std,best,jobs\n"
    table = (
        pd.DataFrame(rows)
        .groupby("configuration", sort=False)
        .agg(
            n=("value", "count"),
            failed=("failed", "sum"),
            mean=("value", "mean"),
            std=("value", "std"),
            best=("best", "max"),
            jobs=("job", " ".join),
        )
        .reset_index()
    )
    for col in ("mean", "std"):  # exact reprs, empty when undefined (as before)
        table[col] = [repr(float(v)) if pd.notna(v) else "" for v in table[col]]
    return table.to_csv(index=False, lineterminator="\n")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(summary: Summary) -> str:
    metric = summary.metric or "(no optimized_metric)"
    n_ok = sum(j.status == "completed" for j in summary.jobs)
    lines = [
        f"# Sweep summary: {summary.sweep_dir.name}",
        "",
        f"- sweep dir: `{summary.sweep_dir}`",
        f"- optimized_metric: `{metric}` ({summary.mode})",
        f"- jobs: {len(summary.jobs)}, completed {n_ok}, failed {len(summary.failed)}",
    ]
    no_test = [str(j.num) for j in summary.jobs if j.note]
    if no_test:
        lines.append(
            f"- test/*: none, {next(j.note for j in summary.jobs if j.note)} in job(s) {', '.join(no_test)}"
        )
    common, common_set = _common_overrides(summary.jobs, summary.searched)
    if common and len(summary.jobs) > 1:
        lines.append(f"- overrides of every job: `{' '.join(common)}`")
    best = summary.best
    if best is not None:
        varying = [o for o in best.overrides if o not in common_set] or best.overrides
        lines.append(
            f"- best job: {best.num} ({metric} = {_fmt(best.value)}): `{' '.join(varying)}`"
        )
    if summary.optuna:
        lines.append(
            f"- Optuna best value: {_fmt(summary.optuna.get('best_value'))}, best params: "
            f"`{json.dumps(summary.optuna.get('best_params', {}), sort_keys=True)}`"
        )
    lines += [
        "",
        f"| job | status | {metric} | overrides | run dir | error |",
        "|---|---|---|---|---|---|",
    ]
    for j in summary.jobs:
        varying = (
            [o for o in j.overrides if o not in common_set]
            if len(summary.jobs) > 1
            else j.overrides
        )
        rel = os.path.relpath(j.run_dir, summary.sweep_dir)
        mark = " ★" if j.best else ""
        lines.append(
            f"| {j.num}{mark} | {j.status} | {_value_cell(j, summary.metric)} | `{_md_cell(' '.join(varying))}` "
            f"| [{rel}]({rel}) | {_md_cell(j.error)} |"
        )
    if summary.trials:
        lines += [
            "",
            f"## Every trial of the study ({len(summary.trials)}, all runs on its storage)",
            "",
            f"| trial | state | {metric} | params |",
            "|---|---|---|---|",
        ]
        for t in summary.trials:
            value = _fmt(float(t["value"])) if t.get("value") else ""
            lines.append(
                f"| {t['trial']} | {t['state']} | {value} | `{_md_cell(t.get('params', ''))}` |"
            )
    if summary.has_seed_repeats:
        lines += [
            "",
            f"## Per configuration ({summary.repeat_label}: mean ± std)",
            "",
            f"| configuration | n | {metric} | failed | jobs |",
            "|---|---|---|---|---|",
        ]
        for g in summary.groups:
            cfg = [o for o in g.overrides if o not in common_set] or ["(all jobs)"]
            value = "" if g.mean is None else f"{g.mean:.5g} ± {(g.std or 0.0):.2g}"
            mark = " ★" if g.best else ""
            jobs = ", ".join(str(j.num) for j in g.jobs)
            lines.append(
                f"| `{_md_cell(' '.join(cfg))}`{mark} | {len(g.values)} | {value} | {g.failed} | {jobs} |"
            )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    # Jobs on other machines refresh the same files: never leave a half-written table.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(sweep_dir: Path, metric: str | None, mode: str) -> Summary:
    """Write ``summary.csv``, ``summary.md`` (and ``summary_seeds.csv``) at the sweep root."""
    summary = summarize(Path(sweep_dir), metric, mode)
    _atomic_write(summary.sweep_dir / "summary.csv", to_csv(summary))
    _atomic_write(summary.sweep_dir / "summary.md", to_markdown(summary))
    if summary.has_seed_repeats:
        _atomic_write(summary.sweep_dir / "summary_seeds.csv", seeds_to_csv(summary))
    return summary


class SweepSummary(Callback):
    """Hydra callback: job status files, a refreshed sweep table, non-zero exit on failures.

    Args:
        refresh_each_job: rewrite the table after every job (a sweep killed half-way keeps
            the table of its finished jobs).
        fail_on_job_failure: exit with status 1 at the end of a sweep in which a job failed.
    """

    def __init__(self, refresh_each_job: bool = True, fail_on_job_failure: bool = True) -> None:
        self.refresh_each_job = refresh_each_job
        self.fail_on_job_failure = fail_on_job_failure

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not is_rank_zero():
            return
        error = job_return._return_value if job_return.status != JobStatus.COMPLETED else None
        if error is not None and not isinstance(error, UserError):
            # Hydra keeps the exception but prints nothing: put the traceback in the job's log.
            log.error(
                "job %s failed:\n%s",
                config.hydra.job.num,
                "".join(traceback.format_exception(type(error), error, error.__traceback__)),
            )
        write_job_status(config, job_return)
        if self.refresh_each_job:
            try:
                metric = config.get("optimized_metric")
                write_summary(Path(config.hydra.sweep.dir), metric, metric_mode(config, metric))
            except Exception as e:  # the table is a convenience; never fail a job for it
                log.warning("could not refresh the sweep summary: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        metric = config.get("optimized_metric")
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
            raise SystemExit(
                f"error: {len(summary.failed)} of {len(summary.jobs)} jobs failed (job {nums}); "
                f"see {sweep_dir / 'summary.md'}"
            )
