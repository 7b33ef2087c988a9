"""Continue a run: which checkpoint, whether it can continue, the loggers' and schedule's history.

``ckpt_path=<file>`` is used exactly. Otherwise, of the loadable ``*.ckpt`` in the checkpoint dir
(and Lightning's ``hpc_ckpt_*.ckpt`` in the run dir) the highest stored ``global_step`` wins (ties:
newest mtime, then ``last.ckpt``), so reset mtimes cannot promote an older one; damaged files are
skipped with a warning.

A resumed run may train longer, not shorter, with the same scheduler class and interval. The
scheduler's *plan* (state but ``PROGRESS_KEYS``: OneCycle's ``total_steps`` and phases, StepLR's
``step_size``) comes from the new run, its *progress* from the checkpoint: a 1-epoch OneCycle run
extended to 2 continues at step 87 of the 172-step cycle."""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from imgcls.engine.checkpoints.atomic_io import remove_stale_temp_files
from imgcls.engine.checkpoints.load import load_checkpoint_dict
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
    """The readable checkpoint in ``ckpt_dir`` with the most training, or ``None``; files that
    all fail to read are a ``CheckpointError`` naming each with its reason."""
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

    TensorBoard's ``purge_step`` hides events written after the last checkpoint (one curve, no
    overlap); Lightning's CSV writer deletes ``metrics.csv``, so rows before ``step`` carry over."""
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
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()]
            rows = [r for r in rows if int(r["step"]) < step]
            writer = logger.experiment  # creating it removes the old file
            writer.metrics[:0] = [{k: v for k, v in r.items() if v != ""} for r in rows]
            log.info("carried %d rows of %s over into the resumed run", len(rows), path)


# scheduler state entries that record where the run is, kept from the checkpoint on resume
# (T_cur, T_i: CosineAnnealingWarmRestarts; best ... mode_worse: ReduceLROnPlateau)
PROGRESS_KEYS = frozenset(
    [
        "last_epoch",
        "_step_count",
        "_last_lr",
        "_is_initial",
        "_get_lr_called_within_step",
        "base_lrs",
        "T_cur",
        "T_i",
        "best",
        "num_bad_epochs",
        "cooldown_counter",
        "mode_worse",
    ]
)
# schedulers that cannot step past their planned length (OneCycleLR raises there)
LENGTH_KEYS = {"OneCycleLR": "total_steps"}


def _target(cfg: Any) -> str | None:
    return str(cfg.get("_target_")) if isinstance(cfg, Mapping) and cfg else None


def _short(target: str | None) -> str:
    return target.rsplit(".", 1)[-1] if target else "none"


def epochs_started(ckpt: Mapping[str, Any]) -> int:
    """Epochs the checkpoint's run has begun (a mid-epoch checkpoint counts its epoch)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]["started"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", 0)) + 1


def check_resume_plan(
    ckpt: Mapping[str, Any],
    hparams: Mapping[str, Any],
    max_epochs: int | None,
    max_steps: int | None,
    path: str | Path | None,
) -> None:
    """Refuse (one message saying what to change) fewer epochs/steps than the checkpoint has
    trained, or another scheduler than the stored one; ``max_*`` ``None``/``-1``: no limit."""
    stored = ckpt.get("hyper_parameters") or {}
    started, step = epochs_started(ckpt), int(ckpt.get("global_step", 0))
    if max_epochs is not None and max_epochs >= 0 and max_epochs < started:
        raise CheckpointError(
            f"checkpoint {path} has already trained {started} epoch(s) (global step {step}); "
            f"trainer.max_epochs={max_epochs} is fewer. Resume with trainer.max_epochs>={started}, "
            f"or evaluate it with python src/eval.py ckpt_path={path}"
        )
    if max_steps is not None and 0 <= max_steps < step:
        raise CheckpointError(
            f"checkpoint {path} is at global step {step}; trainer.max_steps={max_steps} is fewer"
        )
    if "scheduler" not in stored:
        return
    theirs, ours = _target(stored.get("scheduler")), _target(hparams.get("scheduler"))
    interval = (stored.get("scheduler_interval"), hparams.get("scheduler_interval"))
    kids = (_children(stored.get("scheduler")), _children(hparams.get("scheduler")))
    if kids[0] != kids[1]:
        raise CheckpointError(
            f"checkpoint {path} was trained with {_short(theirs)} of {kids[0]}; this run "
            f"configures {kids[1]}: resume with the checkpoint's model.scheduler"
        )
    if _short(theirs) != _short(ours) or (theirs and interval[0] != interval[1]):
        raise CheckpointError(
            f"checkpoint {path} was trained with scheduler {_short(theirs)} "
            f"(interval {interval[0]}); this run configures {_short(ours)} (interval "
            f"{interval[1]}): a different scheduler cannot continue the stored schedule. Resume "
            f"with the checkpoint's model.scheduler, or start a new run"
        )


def plan_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a scheduler's ``state_dict`` that the new run's config decides
    (a SequentialLR's children: the plan of each, their progress stays the checkpoint's)."""
    plan = {k: copy.deepcopy(v) for k, v in state.items() if k not in PROGRESS_KEYS}
    if isinstance(plan.get("_schedulers"), list):
        plan["_schedulers"] = [plan_of(child) for child in state["_schedulers"]]
    return plan


def _with_plan(state: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the entries of ``plan`` (recursing into SequentialLR's children)."""
    merged = {**state, **copy.deepcopy(dict(plan))}
    if isinstance(plan.get("_schedulers"), list):
        merged["_schedulers"] = [
            _with_plan(s, p) for s, p in zip(state["_schedulers"], plan["_schedulers"], strict=True)
        ]
    return merged


def _children(cfg: Any) -> list[str]:
    kids = cfg.get("schedulers") if isinstance(cfg, Mapping) else None
    return [_short(_target(k)) for k in kids] if isinstance(kids, list) else []


def _describe(changed: dict[str, tuple[Any, Any]]) -> str:
    simple = [f"{k} {a} -> {b}" for k, (a, b) in changed.items() if not k.startswith("_")]
    return ", ".join(simple) or ", ".join(changed)


class ReplanSchedulerOnResume(L.Callback):
    """On resume, give each restored scheduler the plan of the new run (see module doc)."""

    def __init__(self) -> None:
        self._fresh: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # configure_optimizers has run; the checkpoint's scheduler state is not loaded yet
        self._fresh = [plan_of(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.ckpt_path:
            return
        for config, fresh in zip(trainer.lr_scheduler_configs, self._fresh, strict=False):
            sched = config.scheduler
            state = sched.state_dict()
            now = plan_of(state)
            changed = {k: (now.get(k), v) for k, v in fresh.items() if now.get(k) != v}
            if not changed:
                continue
            name, step = type(sched).__name__, int(state.get("last_epoch", 0))
            length_key = LENGTH_KEYS.get(name)
            if length_key and int(fresh[length_key]) < step:
                raise CheckpointError(
                    f"resumed {name} is at step {step}, but this run plans {length_key}="
                    f"{fresh[length_key]}: train at least as long as the checkpoint's run"
                )
            sched.load_state_dict(_with_plan(state, fresh))
            what = f"{name} at {config.interval} {step} with this run's plan ({_describe(changed)})"
            log.info("resumed %s; its progress is the checkpoint's", what)
