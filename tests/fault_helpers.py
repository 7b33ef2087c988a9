"""Callbacks that make a training run fail on purpose at an exact step (fault-tolerance tests).

They are added to a run with ``+callbacks.<name>._target_=tests.fault_helpers.<Class>``; the
subprocess needs the repo root on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import time

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL this process right after optimizer step ``step`` (no hook, no flush, no save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class CrashAtStep(L.Callback):
    """Raise an unrelated error after step ``step``: in-process stand-in for a hard kill
    (nothing is saved on the way out)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class SlowSteps(L.Callback):
    """Sleep after every step, so that a signal sent from outside lands mid-training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        time.sleep(self.seconds)


class NaNInputAtStep(L.Callback):
    """Corrupt the batch of the step that will become ``step`` (a bad sample: NaN loss)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step + 1 == self.step:
            batch[0].fill_(float("nan"))


class NaNWeightsAtStep(L.Callback):
    """Make a weight NaN after step ``step``, as an overflowing optimizer update would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")
