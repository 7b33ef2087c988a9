"""Helpers shared by benchmark sections: config composition and epoch timing."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import imgcls  # noqa: F401  (registers the ${project_root:} resolver)
from imgcls.utils.config import project_root


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose a project config outside of ``@hydra.main`` (as the tests do)."""
    with initialize_config_dir(str(project_root() / "configs"), version_base="1.3"):
        return compose(
            config_name,
            overrides=[f"paths.output_dir={output_dir}", "extras.print_config=false", *overrides],
        )


class EpochTimer(L.Callback):
    """Training-epoch wall times (excludes validation, set-up and teardown) and step times.

    ``steps`` holds the time between consecutive batch starts, i.e. everything one step
    costs (data fetch, transfer, hooks, forward, backward, optimizer, logging).
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.images: list[int] = []
        self.steps: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()
        self._n = 0
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        if self._last is not None:
            self.steps.append(now - self._last)
        self._last = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._n += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._t)
        self.images.append(self._n)


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


class FirstStepStamp(L.Callback):
    """Writes the wall-clock time (``time.time()``) of the first training step to ``path``.

    Added to a ``python src/train.py`` run by the benchmark to measure start-up:
    ``+callbacks.first_step._target_=benchmarks._common.FirstStepStamp +callbacks.first_step.path=...``
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if not self._done:
            self._done = True
            self.path.write_text(repr(time.time()))
