"""``hydra/sweeper=optuna``: Hydra's sweeper interface on current Optuna (ask-and-tell), in
place of ``hydra-optuna-sweeper`` (stuck on optuna<3). The search lives in
``imgcls.engine.sweeps.optuna_study``; this module stays import-light because Hydra imports every
plugin module at start-up, sweep or not."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Config keys as in ``configs/hydra/sweeper/optuna.yaml``; sampler and pruner arrive as
    configs (``_recursive_: false``): the search builds them, so a missing Optuna is one line."""

    def __init__(
        self,
        sampler: Any,
        direction: Any = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 1.0,
        pruner: Any = None,
        params: DictConfig | None = None,
    ) -> None:
        self.sampler, self.pruner, self.params = sampler, pruner, params
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from imgcls.errors import missing_extra

        try:
            from imgcls.engine.sweeps.optuna_study import OptunaSearch
        except ModuleNotFoundError as e:
            if (error := missing_extra(e)) is None:
                raise
            print(f"error: hydra/sweeper=optuna: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        OptunaSearch(self, arguments).run()
