"""One table per sweep: every job's status, overrides and ``optimized_metric``, best job marked;
seed and fold repeats as mean ± std per configuration; Optuna's best trial. Refreshed after
every job, wherever it ran, so a sweep that dies half-way keeps the table of the finished jobs;
a sweep in which a job failed exits non-zero."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.engine.sweeps.jobs import (
    SHOWN_METRICS,
    TRIALS_FILE,
    JobRecord,
    collect_jobs,
)

log = logging.getLogger(__name__)

# repeat dimensions: jobs differing only by these are one configuration (mean ± std over them)
SEED_KEYS = ("seed", "data.fold")
REPEAT_NAMES = {"seed": "seed repeats", "data.fold": "folds"}
JOB_COLUMNS = ["job", "status", "best", "optimized_metric", "overrides", "run_dir", "error"]
GROUP_COLUMNS = ["configuration", "n", "failed", "mean", "std", "best", "jobs"]


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


@dataclass
class Summary:
    sweep_dir: Path
    metric: str | None
    mode: str  # max | min
    jobs: list[JobRecord]
    groups: pd.DataFrame  # one row per configuration: GROUP_COLUMNS, overrides
    optuna: dict[str, Any] | None = None
    trials: pd.DataFrame | None = None  # TRIALS_FILE, as strings
    searched: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return self.metric or "(no optimized_metric)"

    @property
    def failed(self) -> list[JobRecord]:
        return [j for j in self.jobs if j.failed]

    @property
    def best(self) -> JobRecord | None:
        return next((j for j in self.jobs if j.best), None)

    @property
    def has_seed_repeats(self) -> bool:
        return len(self.groups) < len(self.jobs)

    @property
    def repeat_label(self) -> str:
        """The repeat keys that vary, e.g. ``folds`` or ``seed repeats, folds``."""
        varying = {_key(o) for j in self.jobs for o in j.overrides}
        return ", ".join(REPEAT_NAMES[k] for k in SEED_KEYS if k in varying) or "seed repeats"


def first_metric(config: DictConfig) -> str | None:
    """``optimized_metric``, or the first of several (the tables rank by it)."""
    metric = config.get("optimized_metric")
    return metric if metric is None or isinstance(metric, str) else str(metric[0])


def metric_mode(config: DictConfig, metric: str | None) -> str:
    """``max`` or ``min``: the sweeper's direction when it has one, else guessed from the name."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if isinstance(direction, ListConfig) and len(direction):
        direction = direction[0]
    if isinstance(direction, str):
        return "min" if direction.lower().startswith("min") else "max"
    name = (metric or "").lower()
    return "min" if any(k in name for k in ("loss", "err", "perplexity")) else "max"


def _groups(jobs: list[JobRecord], sign: float) -> pd.DataFrame:
    """Jobs equal but for their seed/fold, in order of first appearance; best mean marked."""
    frame = pd.DataFrame(
        {
            "overrides": [tuple(o for o in j.overrides if _key(o) not in SEED_KEYS) for j in jobs],
            "value": pd.Series([j.score for j in jobs], dtype=float),
            "failed": [int(j.failed) for j in jobs],
            "job": [str(j.num) for j in jobs],
        }
    )
    frame["configuration"] = frame["overrides"].map(" ".join)
    groups = (
        frame.groupby("configuration", sort=False)
        .agg(
            n=("value", "count"),
            failed=("failed", "sum"),
            mean=("value", "mean"),
            std=("value", "std"),  # ddof 1
            jobs=("job", " ".join),
            overrides=("overrides", "first"),
        )
        .reset_index()
    )
    groups["best"] = 0
    if groups["mean"].notna().any():
        groups.loc[(sign * groups["mean"]).idxmax(), "best"] = 1
    return groups


def _searched(sweep_dir: Path) -> set[str]:
    """Keys the sweeper searches: shown per job even when every trial drew the same value."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return set()
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None) or {}
    return {str(k) for k, v in params.items() if any(c in str(v) for c in "(,")}


def summarize(sweep_dir: Path, metric: str | None, mode: str) -> Summary:
    """Collect the jobs of ``sweep_dir`` and mark the best job and configuration."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir, metric)
    sign = 1.0 if mode == "max" else -1.0
    scores = pd.Series([j.score for j in jobs], dtype=float)
    if scores.notna().any():
        jobs[int((sign * scores).idxmax())].best = True
    results, trials = sweep_dir / "optimization_results.yaml", sweep_dir / TRIALS_FILE
    loaded = OmegaConf.to_container(OmegaConf.load(results)) if results.is_file() else None
    optuna = {str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else None
    table = pd.read_csv(trials, dtype=str, keep_default_na=False) if trials.is_file() else None
    return Summary(
        sweep_dir, metric, mode, jobs, _groups(jobs, sign), optuna, table, _searched(sweep_dir)
    )


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.5g}"


def _value_cell(job: JobRecord, metric: str | None, fmt: Any) -> str:
    """The job's metric, or why a ``test/*`` metric has none."""
    if job.value is None:
        return job.note if str(metric or "").startswith("test/") else ""
    return fmt(job.value)


def common_overrides(jobs: list[JobRecord], searched: set[str]) -> list[str]:
    """Overrides every job shares (shown once); a searched key stays per row."""
    first, others = (jobs[0].overrides, jobs[1:]) if jobs else ([], [])
    return [o for o in first if all(o in j.overrides for j in others) and _key(o) not in searched]


def _shown(jobs: list[JobRecord], metric: str | None) -> list[str]:
    """``SHOWN_METRICS`` some job logged (ECE beside accuracy), other than the optimized one."""
    return [m for m in SHOWN_METRICS if m != metric and any(m in j.shown for j in jobs)]


def to_csv(summary: Summary) -> str:
    shown = _shown(summary.jobs, summary.metric)

    def row(j: JobRecord) -> list[Any]:
        value = _value_cell(j, summary.metric, lambda v: repr(float(v)))  # exact
        num = "" if j.num is None else j.num
        extra = [repr(j.shown[m]) if m in j.shown else "" for m in shown]
        return [
            num,
            j.status,
            int(j.best),
            value,
            *extra,
            " ".join(j.overrides),
            j.run_dir,
            j.error,
        ]

    columns = [*JOB_COLUMNS[:4], *shown, *JOB_COLUMNS[4:]]
    table = pd.DataFrame([row(j) for j in summary.jobs], columns=columns)
    return table.to_csv(index=False, lineterminator="\n")


def seeds_to_csv(summary: Summary) -> str:
    """One row per configuration: n, failed, mean and std over its seeds/folds."""
    table = summary.groups.reindex(columns=GROUP_COLUMNS)
    for col in ("mean", "std"):  # exact reprs, empty when undefined
        table[col] = [repr(float(v)) if pd.notna(v) else "" for v in table[col]]
    return table.to_csv(index=False, lineterminator="\n")


def _md_table(table: pd.DataFrame) -> list[str]:
    # DataFrame.to_markdown needs `tabulate`, which is not a dependency: a GitHub table by hand.
    cells = [table.columns, *table.itertuples(index=False)]
    rows = [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
        for r in cells
    ]
    return ["", rows[0], "|" + "---|" * table.shape[1], *rows[1:]]


def _bullets(s: Summary, common: list[str]) -> list[str]:
    n_ok = sum(j.status == "completed" for j in s.jobs)
    n_pruned = sum(j.status == "pruned" for j in s.jobs)
    pruned = f", pruned {n_pruned}" if n_pruned else ""
    lines = [
        f"# Sweep summary: {s.sweep_dir.name}",
        "",
        f"- sweep dir: `{s.sweep_dir}`",
        f"- optimized_metric: `{s.label}` ({s.mode})",
        f"- jobs: {len(s.jobs)}, completed {n_ok}{pruned}, failed {len(s.failed)}",
    ]
    if no_test := [j for j in s.jobs if j.note]:
        nums = ", ".join(str(j.num) for j in no_test)
        lines.append(f"- test/*: none, {no_test[0].note} in job(s) {nums}")
    if common and len(s.jobs) > 1:
        lines.append(f"- overrides of every job: `{' '.join(common)}`")
    if (best := s.best) is not None:
        varying = " ".join([o for o in best.overrides if o not in common] or best.overrides)
        lines.append(f"- best job: {best.num} ({s.label} = {_fmt(best.value)}): `{varying}`")
    if s.optuna and "solutions" in s.optuna:  # several objectives: no single best
        trials = ", ".join(str(t.get("trial")) for t in s.optuna["solutions"])
        lines.append(f"- Optuna Pareto front: trial(s) {trials} (optimization_results.yaml)")
    elif s.optuna:
        params = json.dumps(s.optuna.get("best_params", {}), sort_keys=True)
        value = _fmt(s.optuna.get("best_value"))
        lines.append(f"- Optuna best value: {value}, best params: `{params}`")
    return lines


def _jobs_table(s: Summary, common: list[str]) -> pd.DataFrame:
    shown = common if len(s.jobs) > 1 else []
    extra = _shown(s.jobs, s.metric)
    rows = []
    for j in s.jobs:
        rel = os.path.relpath(j.run_dir, s.sweep_dir)
        varying = " ".join(o for o in j.overrides if o not in shown)
        num = f"{j.num} ★" if j.best else str(j.num)
        value = _value_cell(j, s.metric, _fmt)
        more = [_fmt(j.shown.get(m)) for m in extra]
        rows.append([num, j.status, value, *more, f"`{varying}`", f"[{rel}]({rel})", j.error])
    columns = ["job", "status", s.label, *extra, "overrides", "run dir", "error"]
    return pd.DataFrame(rows, columns=columns)


def _trials_table(t: pd.DataFrame, label: str) -> pd.DataFrame:
    values = [_fmt(float(v)) if v else "" for v in t["value"]]
    params = "`" + t["params"] + "`"
    return pd.DataFrame({"trial": t["trial"], "state": t["state"], label: values, "params": params})


def _groups_table(s: Summary, common: list[str]) -> pd.DataFrame:
    rows = []
    for g in s.groups.itertuples(index=False):
        cfg = " ".join(o for o in g.overrides if o not in common) or "(all jobs)"
        std = 0.0 if pd.isna(g.std) else g.std
        value = "" if pd.isna(g.mean) else f"{g.mean:.5g} ± {std:.2g}"
        mark = " ★" if g.best else ""
        rows.append([f"`{cfg}`{mark}", g.n, value, g.failed, ", ".join(g.jobs.split())])
    return pd.DataFrame(rows, columns=["configuration", "n", s.label, "failed", "jobs"])


def to_markdown(s: Summary) -> str:
    common = common_overrides(s.jobs, s.searched)
    lines = _bullets(s, common) + _md_table(_jobs_table(s, common))
    if s.trials is not None and len(s.trials):
        title = f"## Every trial of the study ({len(s.trials)}, all runs on its storage)"
        lines += ["", title] + _md_table(_trials_table(s.trials, s.label))
    if s.has_seed_repeats:
        title = f"## Per configuration ({s.repeat_label}: mean ± std)"
        lines += ["", title] + _md_table(_groups_table(s, common))
    return "\n".join(lines) + "\n"
