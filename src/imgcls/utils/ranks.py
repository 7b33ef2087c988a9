"""Which process is this: the one rank-zero check and local-rank reading of the package."""

from __future__ import annotations

import os

from lightning.pytorch.utilities.rank_zero import rank_zero_only


def is_rank_zero() -> bool:
    """Global rank 0 (Lightning sets ``rank_zero_only.rank`` once the trainer knows it)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def local_rank() -> int:
    """This process's rank on its node, from the environment (also before a trainer exists)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0
