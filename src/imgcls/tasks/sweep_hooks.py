"""The seam between Hydra's callbacks and the sweep engine: a single run imports none of it."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig


class InMultirun(Callback):
    """Hydra callback ``callback`` (a class path, with the other keys as its arguments), built
    the first time a multirun calls a hook; single runs never import it."""

    def __init__(self, callback: str, **kwargs: Any) -> None:
        self._path, self._kwargs = callback, kwargs
        self._callback: Callback | None = None

    def _engine(self, config: DictConfig) -> Callback | None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return None
        if self._callback is None:
            self._callback = get_class(self._path)(**self._kwargs)
        return self._callback

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if callback := self._engine(config):
            callback.on_multirun_start(config, **kwargs)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if callback := self._engine(config):
            callback.on_multirun_end(config, **kwargs)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if callback := self._engine(config):
            callback.on_job_start(config, **kwargs)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if callback := self._engine(config):
            callback.on_job_end(config, job_return, **kwargs)
