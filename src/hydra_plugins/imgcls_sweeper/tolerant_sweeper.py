"""Hydra's grid sweeper, except that a failed job does not stop the sweep.

``BasicSweeper.sweep`` reads every job's ``return_value`` right after its batch, which
re-raises the first job's exception and abandons the remaining jobs. In a grid of trainings
one bad combination (an image too small for a net, a diverging learning rate) should cost
that job only: it is recorded as failed (``imgcls.sweeps.summary`` lists it and makes the
command exit non-zero) and the sweep goes on.

Hydra only instantiates plugins living under ``hydra_plugins``, hence this package.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from imgcls.sweeps.jobs import describe_error

log = logging.getLogger(__name__)


class TolerantSweeper(BasicSweeper):
    """Cartesian-product sweeper (same overrides syntax as ``basic``) that runs every job."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        assert self.launcher is not None
        assert self.hydra_context is not None

        params_conf = self._parse_config()
        params_conf.extend(arguments)
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
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)  # composition errors stop the sweep early
            log.debug("validated %d job configs in %.2f s", len(batch), time.perf_counter() - tic)
            results = list(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            for i, r in enumerate(results):
                if r.status != JobStatus.COMPLETED:
                    # The job's own log holds the details; the sweep goes on.
                    text = describe_error(r._return_value).strip()
                    first_line = text.splitlines()[0] if text else ""
                    log.error("job #%d failed: %s", initial_job_idx + i, first_line)
            initial_job_idx += len(batch)
            returns.append(results)
        return returns
