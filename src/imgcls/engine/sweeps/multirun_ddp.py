"""Lightning DDP inside Hydra multirun jobs: one job, one run dir, no leftovers for the next job.

Lightning starts ranks 1..N-1 by re-running the command line (in a multirun: the whole sweep), and
jobs sharing a process would inherit ``LOCAL_RANK``/``MASTER_PORT`` and an open process group.
:class:`MultirunDDP` makes each rank re-run *this job* as a single run in the job's directory,
restores the environment and closes the process group at job end, and publishes the job's
command (:func:`current_job`)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Where Lightning looks up the function that builds a rank's command when Hydra is in use.
_LAUNCHER_MODULES = (
    "lightning.pytorch.strategies.launchers.subprocess_script",
    "lightning.fabric.strategies.launchers.subprocess_script",
)
_HOOK = "_hydra_subprocess_cmd"

# Hydra overrides that belong to the sweep, not to the job a rank re-runs
_SWEEP_ONLY = (
    "hydra.mode",
    "hydra.run.",
    "hydra.sweep.",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.job.name",
    "hydra.output_subdir",
)


def _script_of(task_function: TaskFunction) -> str:
    """The script defining ``task_function`` (unpickled by submitit, its code's file is
    ``<dynamic-code>``, but ``__file__`` is kept)."""
    candidates = [getattr(task_function, "__globals__", {}).get("__file__")]
    with contextlib.suppress(TypeError):
        candidates.append(inspect.getsourcefile(task_function))
    for path in candidates:
        if path and os.path.isfile(path):
            return os.path.abspath(path)
    return os.path.abspath(sys.argv[0])


def _main_config_dir(config: DictConfig) -> str | None:
    sources = config.hydra.runtime.config_sources
    return next((str(s.path) for s in sources if s.provider == "main" and s.schema == "file"), None)


@dataclass(frozen=True)
class JobCommand:
    """How to re-run one multirun job as a single run (see :func:`current_job`)."""

    script: str
    task_overrides: Sequence[str]
    hydra_overrides: Sequence[str]
    output_dir: str
    config_dir: str | None
    config_name: str | None
    cwd: str = ""

    def command(self, local_rank: int | None = None, python: str = sys.executable) -> list[str]:
        """Rank ``local_rank``'s command (``None``: the job's own; its rank 0 starts the rest)."""
        cmd = [python, self.script]
        if self.config_dir:
            cmd.append(f"--config-path={self.config_dir}")
        if self.config_name:
            cmd.append(f"--config-name={self.config_name}")
        cmd += list(self.task_overrides)
        cmd += [o for o in self.hydra_overrides if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
        cmd.append(f'hydra.run.dir="{self.output_dir}"')
        if local_rank is not None:
            cmd.append(f"hydra.job.name=ddp_rank_{local_rank}")
        cmd += [
            # the sweep already saved the job's config; a rank must not overwrite it
            "hydra.output_subdir=null",
            # a config may switch to multirun itself (hparams_search); a rank is one run
            "hydra.mode=RUN",
        ]
        return cmd


def rank_command(*, local_rank: int | None, python: str = sys.executable, **job: Any) -> list[str]:
    return JobCommand(**job).command(local_rank, python)


_current_job: JobCommand | None = None


def current_job() -> JobCommand | None:
    """The multirun job running in this process (``None`` outside one)."""
    return _current_job


class MultirunDDP(Callback):
    """Hydra callback: DDP ranks of a multirun job re-run that job; jobs do not leak state."""

    def __init__(self) -> None:
        self._saved_env: dict[str, str] | None = None
        self._saved_hooks: dict[str, Callable[..., Any]] = {}

    def on_job_start(
        self, config: DictConfig, *, task_function: TaskFunction, **kwargs: Any
    ) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        global _current_job
        self._saved_env = dict(os.environ)
        hydra = config.hydra
        job = _current_job = JobCommand(
            script=_script_of(task_function),
            task_overrides=tuple(hydra.overrides.task),
            hydra_overrides=tuple(hydra.overrides.hydra),
            output_dir=str(hydra.runtime.output_dir),
            config_dir=_main_config_dir(config),
            config_name=hydra.job.config_name,
            cwd=str(hydra.runtime.cwd),
        )

        def command(local_rank: int) -> tuple[list[str], str]:
            return job.command(local_rank), job.cwd

        for name in _LAUNCHER_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if not hasattr(module, _HOOK):
                log.warning("%s.%s not found: DDP ranks will re-run the whole sweep", name, _HOOK)
                continue
            self._saved_hooks[name] = getattr(module, _HOOK)
            setattr(module, _HOOK, command)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        global _current_job
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        _current_job = None
        for name, hook in self._saved_hooks.items():
            setattr(sys.modules[name], _HOOK, hook)
        self._saved_hooks.clear()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if self._saved_env is not None:
            # LOCAL_RANK, WORLD_SIZE, MASTER_PORT, PL_GLOBAL_SEED... set during the job; the
            # job's hydra.job.env_set is Hydra's to undo (it already has, before this hook)
            hydra_owned = set(config.hydra.job.env_set or {})
            for key in set(os.environ) - set(self._saved_env) - hydra_owned:
                del os.environ[key]
            for key, value in self._saved_env.items():
                if key not in hydra_owned and os.environ.get(key) != value:
                    os.environ[key] = value
            self._saved_env = None
