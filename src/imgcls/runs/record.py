"""``run.json``: what a colleague needs to reproduce a run, written when the task starts and
completed when it ends (also on an error or Ctrl-C): the command and overrides, the git commit
(the diff beside it when dirty), package versions, the machine, the seed, the data fingerprint,
wall time, peak memory and where training stopped. Rank zero writes it, atomically."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from imgcls.utils.config import project_root
from imgcls.utils.files import atomic_write_text
from imgcls.utils.ranks import is_rank_zero

log = logging.getLogger(__name__)

RECORD_FILE = "run.json"
DIFF_FILE = "git_diff.patch"
CORE = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics", "numpy")
# optional libraries: recorded when the run imported them
EXTRAS = (
    "timm",
    "litdata",
    "mlflow",
    "wandb",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "optuna",
    "scipy",
    "matplotlib",
    "submitit",
    "tensorboard",
    "pandas",
    "PIL",
)


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: Path, out_dir: Path | None = None) -> dict[str, Any] | None:
    """Commit, dirty flag, untracked files; the diff against HEAD saved as ``DIFF_FILE`` in
    ``out_dir`` when dirty. ``None`` when ``root`` is not in a git work tree (or no git)."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(root, "status", "--porcelain") or ""
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    state: dict[str, Any] = {
        "commit": commit.strip(),
        "branch": (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
        "dirty": bool(status.strip()),
        "untracked": untracked,
        "diff": None,
    }
    diff = _git(root, "diff", "HEAD", "--binary")
    if diff and out_dir is not None:
        atomic_write_text(out_dir / DIFF_FILE, diff)
        state["diff"] = DIFF_FILE
    return state


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions(modules: Any = None) -> dict[str, str | None]:
    """The stack's versions, plus each optional library in ``modules`` (default: imported)."""
    loaded = sys.modules if modules is None else modules
    found = {d: _version(d) for d in CORE}
    for mod in EXTRAS:
        if mod in loaded:
            # most share their module's name; the others (PIL -> pillow) need the whole map
            if (version := _version(mod)) is not None:
                found[mod] = version
            else:
                found.update((d, _version(d)) for d in _owners().get(mod, [mod]))
    return found


@functools.cache
def _owners() -> Mapping[str, list[str]]:
    """Module -> distributions: reads every installed package's metadata (0.2 s), once."""
    return metadata.packages_distributions()


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "platform": platform.platform(),
    }


def peak_memory() -> dict[str, float | None]:
    """Peak resident set size of this process (and of its finished children: loader workers,
    DDP ranks), and the CUDA allocator's peak when CUDA was used; MiB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # KiB on Linux, bytes on macOS
    cuda = torch.cuda.is_initialized()
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
        "peak_rss_children_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1
        ),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def _overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra context (a task called from Python)
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """``run.json`` of one run: :meth:`finish` completes it (idempotent)."""

    def __init__(self, cfg: DictConfig, task: str) -> None:
        self.out = Path(cfg.paths.output_dir)
        self.enabled = is_rank_zero()
        self.trainer: Any = None
        self._t0 = time.perf_counter()
        trainer_cfg = cfg.get("trainer") or {}
        self.data: dict[str, Any] = {
            "task": task,
            "status": "running",
            "started": _now(),
            "finished": None,
            "wall_time_s": None,
            "command": {
                "argv": list(sys.argv),
                "overrides": _overrides(),
                "cwd": os.getcwd(),
                "executable": sys.executable,
            },
            "git": git_state(project_root(), self.out) if self.enabled else None,
            "python": platform.python_version(),
            "packages": package_versions(),
            "hardware": hardware(),
            "trainer": {
                k: str(trainer_cfg.get(k))
                for k in ("accelerator", "devices", "precision", "strategy")
            },
            "seed": cfg.get("seed"),
            "data_fingerprint": None,
            "stopped": None,
            "memory": None,
            "error": None,
        }
        self.write()

    def write(self) -> None:
        if self.enabled:
            atomic_write_text(self.out / RECORD_FILE, json.dumps(self.data, indent=2, default=str))

    def attach(self, trainer: Any, fingerprint: dict[str, Any] | None) -> None:
        """The trainer (where it stops, its precision) and the data fingerprint."""
        self.trainer = trainer
        self.data["data_fingerprint"] = fingerprint
        self.write()

    def finish(self, error: BaseException | None = None) -> None:
        if self.data["status"] != "running":
            return
        t = self.trainer
        interrupted = isinstance(error, KeyboardInterrupt) or bool(getattr(t, "interrupted", 0))
        self.data["status"] = (
            "completed" if error is None else "interrupted" if interrupted else "failed"
        )
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {str(error).strip()}".splitlines()[0]
        self.data["finished"] = _now()
        self.data["wall_time_s"] = round(time.perf_counter() - self._t0, 2)
        self.data["memory"] = peak_memory()
        self.data["packages"] = package_versions()  # now with the extras the run imported
        if t is not None:
            self.data["stopped"] = {"epoch": int(t.current_epoch), "step": int(t.global_step)}
            self.data["trainer"] |= {
                "accelerator": type(t.accelerator).__name__,
                "devices": int(t.num_devices),
                "precision": str(t.precision),
                "strategy": type(t.strategy).__name__,
            }
        self.write()


@contextlib.contextmanager
def recorded(cfg: DictConfig, task: str) -> Iterator[RunRecord]:
    """``run.json`` for the task in this block, completed however the block ends."""
    record = RunRecord(cfg, task)
    try:
        yield record
    except BaseException as e:
        record.finish(e)
        raise
    record.finish()
