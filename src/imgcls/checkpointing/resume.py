"""Continue a run in its own directory (``resume=<run dir>``, a requeued job): pick a readable
checkpoint, keep the loggers' history.

``ckpt_path=<file>`` is used exactly (no fallback). Otherwise, of the ``*.ckpt`` in the checkpoint
dir (and Lightning's ``hpc_ckpt_*.ckpt`` in the run dir) that load, the one with the highest
``global_step`` read from the file wins (ties: newest mtime, then ``last.ckpt``), so a copy that
reset mtimes cannot make an older one win; a damaged file is skipped with a warning.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from imgcls.checkpointing.atomic_io import remove_stale_temp_files
from imgcls.checkpointing.load import load_checkpoint_dict
from imgcls.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    path: Path
    checkpoint: dict[str, Any]

    @property
    def global_step(self) -> int:
        return int(self.checkpoint.get("global_step", 0))

    @property
    def epoch(self) -> int:
        return int(self.checkpoint.get("epoch", 0))


def _candidates(ckpt_dir: Path, run_dir: Path | None) -> list[Path]:
    files = list(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if run_dir is not None and run_dir.is_dir():
        files += list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's SLURM requeue checkpoints
    return sorted(set(files))


def _rank(point: ResumePoint) -> tuple[int, float, bool]:
    # most training first; on equal steps the newest file, then last.ckpt (LastCheckpoint's)
    return point.global_step, point.path.stat().st_mtime, point.path.stem == "last"


def find_resume_checkpoint(
    ckpt_dir: str | Path, run_dir: str | Path | None = None
) -> ResumePoint | None:
    """The readable checkpoint in ``ckpt_dir`` with the most training; ``None`` when there is none.

    Raises:
        CheckpointError: checkpoint files exist but none of them can be read (each one is
            named with the reason).
    """
    ckpt_dir = Path(ckpt_dir)
    remove_stale_temp_files(ckpt_dir)
    failures, points = [], []
    for path in _candidates(ckpt_dir, Path(run_dir) if run_dir else None):
        try:  # mmap: only the header and the small entries are read to rank the files
            points.append(ResumePoint(path, load_checkpoint_dict(path, mmap=True)))
        except CheckpointError as e:
            log.warning("skipping %s", e)
            failures.append(str(e))
    if not points:
        if failures:
            raise CheckpointError("no readable checkpoint to resume from: " + "; ".join(failures))
        return None
    best = max(points, key=_rank)
    if failures:
        log.warning("resuming from the previous good checkpoint %s instead", best.path)
    return best


def continue_loggers(loggers: list[Logger], step: int) -> None:
    """Make loggers append to the run's logs from ``step`` on (call before their first use).

    TensorBoard's ``purge_step`` hides the events the killed process wrote after its last
    checkpoint (one curve, no overlap). Lightning's CSV writer deletes ``metrics.csv``: the rows
    before ``step`` are carried over.
    """
    if getattr(rank_zero_only, "rank", 0) != 0:  # other DDP ranks do not write logs
        return
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and logger._experiment is None:
            logger._kwargs["purge_step"] = step
        elif isinstance(logger, CSVLogger) and logger._experiment is None:
            path = Path(logger.log_dir) / "metrics.csv"
            if not path.is_file():
                continue
            with open(path, newline="") as f:
                rows = [
                    r
                    for r in csv.DictReader(f)
                    if r.get("step", "").isdigit() and int(r["step"]) < step
                ]
            writer = logger.experiment  # creating it removes the old file
            writer.metrics[:0] = [{k: v for k, v in r.items() if v != ""} for r in rows]
            log.info("carried %d rows of %s over into the resumed run", len(rows), path)
