"""Hydra's grid sweeper, except that a failed job does not stop the sweep.

``BasicSweeper.sweep`` re-raises a batch's first failure and abandons the remaining jobs; here one
bad combination costs that job only (the summary lists it, the command exits non-zero)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class TolerantSweeper(BasicSweeper):
    """Cartesian-product sweeper (same overrides syntax as ``basic``) that runs every job."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context
        params_conf = [*self._parse_config(), *arguments]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(params_conf)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[list[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)  # composition errors stop the sweep early
            results = list(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            for i, r in enumerate(results):
                if r.status != JobStatus.COMPLETED:
                    # the job's own log holds the details
                    from imgcls.engine.sweeps.jobs import describe_error

                    first_line = (describe_error(r._return_value).strip().splitlines() or [""])[0]
                    log.error("job #%d failed: %s", initial_job_idx + i, first_line)
            initial_job_idx += len(batch)
            returns.append(results)
        return returns
