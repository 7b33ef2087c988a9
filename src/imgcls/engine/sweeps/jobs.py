"""A sweep's jobs as files: each records its outcome in its own directory and the summary reads
them back, the same whichever launcher (local, submitit, SLURM) ran them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from imgcls.utils.files import atomic_write_text

STATUS_FILE = "job_status.json"
TRIALS_FILE = "optuna_trials.csv"  # every trial of a study resumed from storage (at the sweep root)


# what the sweep tables show beside the optimized metric, when a job logged it
SHOWN_METRICS = ("test/acc", "val/ece", "test/ece")


@dataclass
class JobRecord:
    num: int | None
    status: str  # completed | pruned | failed | incomplete (no status file: running or killed)
    overrides: list[str]
    value: float | None
    run_dir: str
    error: str = ""
    best: bool = False
    note: str = ""  # metrics.json's "test" (e.g. "no labeled test split"): why test/* is empty
    shown: dict[str, float] = field(default_factory=dict)  # SHOWN_METRICS found in metrics.json

    @property
    def failed(self) -> bool:
        return self.status not in ("completed", "pruned")  # a pruned trial stopped on purpose

    @property
    def score(self) -> float | None:
        v = self.value  # counts when completed and finite
        return v if self.status == "completed" and v is not None and math.isfinite(v) else None


def describe_error(error: BaseException) -> str:
    """``Type: message``; a job run as its own process names the error its rank recorded."""
    description = getattr(error, "description", None)
    if isinstance(description, str) and description:
        return description
    return f"{type(error).__name__}: {error}"


def is_pruned(error: Any) -> bool:
    """``optuna.TrialPruned``, told by name: only a sweep with Optuna loaded can raise it."""
    return type(error).__name__ == "TrialPruned"


def write_job_status(config: DictConfig, job_return: JobReturn) -> Path:
    out = Path(str(config.hydra.runtime.output_dir))
    ok = job_return.status == JobStatus.COMPLETED
    result = job_return._return_value
    if ok and isinstance(result, (list, tuple)) and result:  # several objectives: the first
        result = result[0]
    status = {
        "num": int(config.hydra.job.num),
        "status": "completed" if ok else "pruned" if is_pruned(result) else "failed",
        "overrides": list(job_return.overrides or []),
        "value": float(result) if ok and isinstance(result, (int, float)) else None,
        "error": describe_error(result) if not ok and result is not None else "",
        "run_dir": str(out),
    }
    atomic_write_text(out / STATUS_FILE, json.dumps(status, indent=2))
    return out / STATUS_FILE


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or being written by a job right now
        return None
    return data if isinstance(data, dict) else None


def _read_job(d: Path, metric: str | None) -> JobRecord | None:
    status = read_json(d / STATUS_FILE)
    if status is not None:
        metrics = read_json(d / "metrics.json") or {}
        value = status.get("value")
        if value is None and status.get("status") == "completed" and metric:
            value = metrics.get("metrics", {}).get(metric)
        note = metrics.get("test", "")
        logged = metrics.get("metrics", {})
        shown = {
            k: float(logged[k]) for k in SHOWN_METRICS if isinstance(logged.get(k), (int, float))
        }
        return JobRecord(
            num=status.get("num"),
            status=status.get("status", "failed"),
            overrides=list(status.get("overrides", [])),
            value=float(value) if isinstance(value, (int, float)) else None,
            run_dir=str(d),
            error=status.get("error", ""),
            note=note if isinstance(note, str) else "",
            shown=shown,
        )
    overrides = d / ".hydra" / "overrides.yaml"
    if (d / STATUS_FILE).is_file() or not overrides.is_file():
        return None
    num = int(d.name) if d.name.isdigit() else None
    error = "no job_status.json: the job is still running or was killed"
    return JobRecord(
        num, "incomplete", [str(o) for o in OmegaConf.load(overrides)], None, str(d), error
    )


def collect_jobs(sweep_dir: Path, metric: str | None = None) -> list[JobRecord]:
    """Every job directory of a sweep (a status file or a saved Hydra config), by job number."""
    dirs = sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir())
    jobs = [job for d in dirs if (job := _read_job(d, metric)) is not None]
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0, j.run_dir))
