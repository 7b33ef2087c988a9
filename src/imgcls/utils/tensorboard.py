"""TensorBoard HParams session: a run's hyper-parameters tied to the metrics it logs anyway.

Lightning's ``TensorBoardLogger.log_hyperparams`` only registers metrics for the HParams view
by writing placeholder values for them at step 0 (``hp_metric = -1``), which pollutes the real
curves. The HParams plugin needs just the *names* of the metrics: it reads their values from
the run's ordinary scalar summaries. So we write the experiment/session records with the tags
and let ``val/acc_best`` and ``test/acc`` arrive as they are logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from imgcls.utils.config import flatten


def hparams_values(params: Mapping[str, Any]) -> dict[str, int | float | str]:
    """Flatten nested params to ``a/b`` keys with values the HParams plugin accepts."""
    out: dict[str, int | float | str] = {}
    for key, value in flatten(params).items():
        # bools become strings: torch's writer would store them as the numbers 0/1
        keep = isinstance(value, int | float | str) and not isinstance(value, bool)
        out[key] = value if keep else str(value)
    return out


@rank_zero_only
def write_hparams_session(
    logger: TensorBoardLogger, params: Mapping[str, Any], metric_tags: Sequence[str]
) -> None:
    """Record ``params`` as one HParams session whose metrics are ``metric_tags``."""
    from torch.utils.tensorboard.summary import hparams

    # The values given for the metrics are not written anywhere; only their tags are used.
    exp, ssi, sei = hparams(hparams_values(params), dict.fromkeys(metric_tags, 0.0))
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)
    writer.flush()
