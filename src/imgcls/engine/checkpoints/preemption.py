"""SIGTERM under DDP: every rank stops after the same optimizer step, with the same last.ckpt.

Lightning broadcasts from inside its signal handler and each rank acts on its own flag, so ranks
can hang in different collectives. :class:`SigtermAgreement` (multi-rank trainers) only sets a
local flag; after every training step the ranks all-reduce it (4 bytes over gloo, no device sync)
and set ``received_sigterm`` at the same step. Ranks started by rank 0 let rank 0 exit first: its
child observer would take their exit code 143 for a crash and SIGKILL rank 0 mid-save."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment

log = logging.getLogger(__name__)


class SigtermAgreement(L.Callback):
    def __init__(self) -> None:
        self._signalled = False
        self._active = False
        self._group: Any = None
        self._flag = torch.zeros(1, dtype=torch.int32)
        self._chained: Any = None  # the handler in place before fit (e.g. a job scheduler's)
        self._launcher_pid: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size <= 1 or not dist.is_initialized():
            return
        self._active = True
        self._signalled = False
        self._chained = signal.getsignal(signal.SIGTERM)
        # every rank runs setup: creating the group is an unconditional collective
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        env = getattr(trainer.strategy, "cluster_environment", None)
        if trainer.local_rank > 0 and isinstance(env, LightningEnvironment):
            self._launcher_pid = os.getppid()  # rank 0 of this node started us

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its handler after setup/on_fit_start; replace it now (its
        # teardown restores the handler from before fit).
        if self._active and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    on_train_start = on_sanity_check_start

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # No collective and no logging here: the handler runs between any two bytecodes.
        self._signalled = True
        if callable(self._chained):
            self._chained(signum, frame)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._active:
            return
        self._flag.fill_(int(self._signalled))
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        if self._flag.item() and not trainer.received_sigterm:
            n, step = trainer.world_size, trainer.global_step
            log.warning("SIGTERM: all %d ranks stop after global step %d", n, step)
            trainer._signal_connector.received_sigterm = True  # what Lightning's handler sets

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._group is not None:
            with contextlib.suppress(Exception):
                dist.destroy_process_group(self._group)
        self._group = None
        self._active = False

    def wait_for_launcher(self, timeout: float = 30.0) -> None:
        """On a rank started by rank 0: wait until rank 0 has exited (at most ``timeout`` s)."""
        pid = self._launcher_pid
        if pid is None or os.getppid() != pid:  # not such a rank, or rank 0 is already gone
            return
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return
        try:
            select.select([fd], [], [], timeout)  # readable once the process has exited
        finally:
            os.close(fd)


def find(callbacks: list[L.Callback]) -> SigtermAgreement | None:
    return next((c for c in callbacks if isinstance(c, SigtermAgreement)), None)
