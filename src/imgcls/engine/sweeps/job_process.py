"""A DDP job of a sweep runs in its own process group, so that a failing rank ends that job only.

Lightning SIGKILLs every rank *and its main process* (the sweep, or the submitit worker) when a
rank fails. So the job runs as a single run in a new session: leftover ranks are killed, the first
error a rank recorded is raised, and SIGTERM/Ctrl+C reach the job's group first (it saves
``last.ckpt``). ``extras.isolate_ddp_jobs``: ``auto`` (jobs whose ranks Lightning starts), ``true``
or ``false``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.engine.checkpoints.fit_guard import SIGTERM_EXIT_CODE
from imgcls.engine.sweeps.jobs import read_json
from imgcls.engine.sweeps.multirun_ddp import JobCommand, current_job
from imgcls.errors import ConfigError, UserError

log = logging.getLogger(__name__)

ERROR_FILE_ENV = "IMGCLS_JOB_ERROR_FILE"
ERROR_FILE = "job_error.json"
_NOT_SCRIPT_LAUNCHED = ("spawn", "fork", "notebook", "single")  # no re-run script, no observer


class JobProcessError(UserError):
    """A job's own process (group) failed; ``description`` is the error a rank recorded."""

    def __init__(self, description: str, detail: str) -> None:
        super().__init__(f"{description} ({detail})")
        self.description = description
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # submitit sends job errors back pickled
        return (type(self), (self.description, self.detail))


def _device_count(devices: Any, accelerator: str) -> int:
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices)
    text = str(devices).strip().lower()
    if text in ("auto", "-1"):
        if accelerator == "cpu":
            return 1
        import torch

        return max(1, torch.cuda.device_count())
    if "," in text:
        return len([t for t in text.split(",") if t.strip()])
    return int(text) if text.isdigit() else 1


def _ranks_started_externally() -> bool:
    """SLURM, torchrun or LSF start every rank: Lightning spawns nothing, observes nothing."""
    from lightning.fabric.plugins import environments as e

    return any(
        env.detect() for env in (e.SLURMEnvironment, e.TorchElasticEnvironment, e.LSFEnvironment)
    )


def launches_rank_processes(trainer: DictConfig | None) -> bool:
    """Whether a trainer built from ``trainer`` starts rank processes from this process."""
    if trainer is None:
        return False
    strategy = trainer.get("strategy", "auto")
    name = str(strategy)
    if isinstance(strategy, DictConfig):
        name = f"{strategy.get('_target_', '')} {strategy.get('start_method', '')}"
    if any(k in name.lower() for k in _NOT_SCRIPT_LAUNCHED):
        return False
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    processes = _device_count(trainer.get("devices", "auto"), accelerator)
    processes *= int(trainer.get("num_nodes", 1) or 1)
    return processes > 1 and not _ranks_started_externally()


def should_isolate(cfg: DictConfig) -> bool:
    """Run this multirun job in its own process group (see the module docstring)."""
    mode = OmegaConf.select(cfg, "extras.isolate_ddp_jobs", default="auto")
    text = str(mode).strip().lower()
    if text not in ("auto", "true", "false"):
        raise ConfigError(f"extras.isolate_ddp_jobs={mode!r}: use auto, true or false")
    if text == "false" or not (text == "true" or launches_rank_processes(cfg.get("trainer"))):
        return False
    if current_job() is None:
        msg = "hydra.callbacks.multirun_ddp is not registered: this DDP job runs inside the sweep"
        log.warning("%s process, and a failing rank can end the whole sweep", msg)
    return current_job() is not None


def record_job_error(exc: BaseException) -> None:
    """In a job's own process (any rank): keep the first error for the job process to report."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0))
    text = json.dumps({"error": f"{type(exc).__name__}: {exc}", "rank": rank, "pid": os.getpid()})
    # Not atomic_write_text (which replaces): written whole, then linked, so the first rank that
    # failed names the cause (the others only followed it) and no file is ever half-written.
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        Path(tmp).write_text(text)
        os.link(tmp, path)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


@contextlib.contextmanager
def _forward_signals(pgid: int, received: list[int]) -> Iterator[None]:
    """SIGTERM/SIGINT to this process go to the job's group (it is in another session)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:  # no logging in a handler (its lock)
        received.append(signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(job: JobCommand, env: dict[str, str]) -> tuple[int, list[int]]:
    """Run the job's command in a new session; when its main process ends, kill its group."""
    cmd = job.command()
    log.info("running this DDP job in its own process group: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=job.cwd, env=env, start_new_session=True)
    received: list[int] = []
    try:
        with _forward_signals(proc.pid, received):
            # WNOWAIT: the exited leader stays a zombie, so its group id cannot be reused
            # before the kill below reaches the ranks it leaves behind
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    return code, received


def _failure(code: int, job_dir: Path) -> JobProcessError:
    log_file = job_dir / "train.log"
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    detail = f"the job's process {how}; its log: {log_file}"
    recorded = read_json(job_dir / ERROR_FILE)
    if recorded and recorded.get("error"):
        return JobProcessError(str(recorded["error"]), f"rank {recorded.get('rank')}; {detail}")
    return JobProcessError(f"DDP job failed: {how}", f"see {log_file}")


def run_job_process(cfg: DictConfig) -> dict[str, float]:
    """The job's final metrics; ``JobProcessError`` when it failed (the sweep goes on),
    ``SystemExit``/``KeyboardInterrupt`` when the sweep itself was told to stop."""
    job = current_job()
    assert job is not None
    job_dir = Path(job.output_dir)
    error_file = job_dir / ERROR_FILE
    for stale in (error_file, job_dir / "metrics.json"):
        stale.unlink(missing_ok=True)
    code, received = _run(job, {**os.environ, ERROR_FILE_ENV: str(error_file)})
    if received:
        names = ", ".join(signal.Signals(s).name for s in received)
        log.warning("%s forwarded to the job's processes; the sweep stops", names)
    if signal.SIGINT in received:
        raise KeyboardInterrupt
    if signal.SIGTERM in received:
        raise SystemExit(SIGTERM_EXIT_CODE)
    if code != 0:
        raise _failure(code, job_dir)
    summary = read_json(job_dir / "metrics.json")
    if summary is None:
        raise JobProcessError("DDP job wrote no metrics.json", f"see {job_dir / 'train.log'}")
    return {k: float(v) for k, v in summary.get("metrics", {}).items()}
