"""``report.html`` at a sweep root, beside summary.md: the jobs table (status, varying overrides,
key metrics from each job's metrics.json), mean ± 95 % confidence interval per configuration over
its seeds and folds, a plot comparing the configurations, and the failed jobs with their error.

Interval: Student's t, ``mean ± t(0.975, n-1) · s / sqrt(n)`` with ``s`` the sample standard
deviation (n-1 in the denominator), over the configuration's completed jobs with a finite value.
t comes from a table (df 1..30, scipy's values to 9 decimals) and above 30 from the
Cornish-Fisher expansion of the normal quantile (error < 3e-6 at df 31): no scipy needed."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from imgcls.engine.sweeps.jobs import read_json
from imgcls.engine.sweeps.summary import Summary, common_overrides
from imgcls.runs import html
from imgcls.utils.files import atomic_write_text

REPORT_FILE = "report.html"
# metrics shown per job beside the optimized one, when the jobs logged them
KEY_METRICS = ("val/acc_best", "val/acc", "test/acc", "val/loss", "test/loss", "test/f1_macro")
MAX_METRICS = 5
_T975 = (
    12.706204736,
    4.302652730,
    3.182446305,
    2.776445105,
    2.570581836,
    2.446911851,
    2.364624252,
    2.306004135,
    2.262157163,
    2.228138852,
    2.200985160,
    2.178812830,
    2.160368656,
    2.144786688,
    2.131449546,
    2.119905299,
    2.109815578,
    2.100922040,
    2.093024054,
    2.085963447,
    2.079613845,
    2.073873068,
    2.068657610,
    2.063898562,
    2.059538553,
    2.055529439,
    2.051830516,
    2.048407142,
    2.045229642,
    2.042272456,
)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of the 95 % interval); no interval from a single value."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _metric_names(summary: Summary, per_job: list[dict[str, float]]) -> list[str]:
    seen = {k for m in per_job for k in m}
    names = [summary.metric] if summary.metric else []
    names += [k for k in KEY_METRICS if k in seen and k not in names]
    return names[:MAX_METRICS]


def _job_metrics(summary: Summary) -> list[dict[str, float]]:
    out = []
    for job in summary.jobs:
        metrics = (read_json(Path(job.run_dir) / "metrics.json") or {}).get("metrics", {})
        ok = job.status == "completed" and isinstance(metrics, dict)
        out.append(
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)} if ok else {}
        )
    return out


def _groups(summary: Summary, per_job: list[dict[str, float]], names: list[str]) -> list[dict]:
    """Per configuration: its jobs and, per metric, the finite values and (mean, half)."""
    by_num = {str(j.num): i for i, j in enumerate(summary.jobs)}
    common = common_overrides(summary.jobs, summary.searched)
    groups = []
    for g in summary.groups.itertuples(index=False):
        idx = [by_num[n] for n in g.jobs.split() if n in by_num]
        label = " ".join(o for o in g.overrides if o not in common) or "(all jobs)"
        values = {
            m: [per_job[i][m] for i in idx if math.isfinite(per_job[i].get(m, math.nan))]
            for m in names
        }
        groups.append(
            {
                "label": label,
                "jobs": idx,
                "values": values,
                "ci": {m: mean_ci(v) for m, v in values.items()},
            }
        )
    return groups


def _ci_cell(values: list[float], ci: tuple[float | None, float | None]) -> str:
    mean, half = ci
    if mean is None:
        return ""
    if half is None:
        return f"{fmt(mean)} (n=1)"
    return f"{fmt(mean)} ± {fmt(half)} [{fmt(mean - half)}, {fmt(mean + half)}] (n={len(values)})"


def _sections(summary: Summary, per_job: list[dict[str, float]], names: list[str]) -> list[str]:
    common = common_overrides(summary.jobs, summary.searched)
    rows, classes = [], []
    for j, m in zip(summary.jobs, per_job, strict=True):
        varying = " ".join(o for o in j.overrides if o not in common)
        rows.append(
            [f"{j.num}{' ★' if j.best else ''}", j.status, varying, *(fmt(m.get(n)) for n in names)]
        )
        classes.append("" if j.status == "completed" else "failed")
    jobs = html.table(("job", "status", "overrides", *names), rows, classes)
    about = {
        "sweep dir": str(summary.sweep_dir),
        "optimized_metric": f"{summary.label} ({summary.mode})",
        "jobs": len(summary.jobs),
        "failed": len(summary.failed),
        "overrides of every job": " ".join(common),
    }
    groups = _groups(summary, per_job, names)
    ci_rows = [
        [
            g["label"],
            " ".join(str(summary.jobs[i].num) for i in g["jobs"]),
            *(_ci_cell(g["values"][n], g["ci"][n]) for n in names),
        ]
        for g in groups
    ]
    out = [html.kv_table(about), html.section("Jobs", jobs)]
    title = f"Per configuration: mean ± 95 % CI over {summary.repeat_label}"
    formula = "t-interval: mean ± t(0.975, n-1) · s / √n, s the sample standard deviation"
    out.append(
        html.section(
            title, html.note(formula), html.table(("configuration", "jobs", *names), ci_rows)
        )
    )
    if names and any(g["values"][names[0]] for g in groups):
        from imgcls.runs.figures import comparison_figure, png_bytes

        fig = comparison_figure(
            [g["label"] for g in groups],
            [g["values"][names[0]] for g in groups],
            [g["ci"][names[0]] for g in groups],
            names[0],
        )
        out.append(
            html.section(
                f"Configurations compared ({names[0]})",
                html.image(png_bytes(fig), f"{names[0]} per configuration"),
            )
        )
    failed = [[j.num, j.status, j.error, j.run_dir] for j in summary.failed]
    if failed:
        out.append(
            html.section("Failed jobs", html.table(("job", "status", "error", "run dir"), failed))
        )
    return out


def write_sweep_report(summary: Summary) -> Path:
    per_job = _job_metrics(summary)
    names = _metric_names(summary, per_job)
    page = html.page(f"Sweep report: {summary.sweep_dir.name}", _sections(summary, per_job, names))
    out = summary.sweep_dir / REPORT_FILE
    atomic_write_text(out, page)
    return out
