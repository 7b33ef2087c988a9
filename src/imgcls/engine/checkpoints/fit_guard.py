"""How ``train`` survives kills, preemption, full disks and NaNs: checks before building
(writable run dir, a safe checkpoint to start from), before fitting (free disk, the resume
checkpoint verified against the built model and data, loggers continued), and around fitting
(one message naming the step, the last good checkpoint and the command that continues)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from imgcls.data.spec import DataSpec
from imgcls.engine import boundary
from imgcls.engine.checkpoints.atomic_io import (
    check_free_space,
    check_writable,
    checkpoint_size_estimate,
    use_atomic_checkpoint_io,
)
from imgcls.engine.checkpoints.last_checkpoint import LastCheckpoint
from imgcls.engine.checkpoints.load import (
    check_checkpoint_fits,
    produced_by,
    read_safe_checkpoint,
    validate_checkpoint,
)
from imgcls.engine.checkpoints.resume import (
    ResumePoint,
    check_resume_plan,
    continue_loggers,
    find_resume_checkpoint,
)
from imgcls.errors import CheckpointError, TrainingError
from imgcls.utils.console import command_line_overrides

if TYPE_CHECKING:  # the engine is handed the run's parts; it never builds them
    from imgcls.builder import RunParts

log = logging.getLogger(__name__)

# 128 + signal, as shells expect
SIGTERM_EXIT_CODE = 143
SIGINT_EXIT_CODE = 130


def check_before_build(cfg: DictConfig) -> None:
    """Before data loading (which may take long): the run dir is writable, and the checkpoint
    to start from is readable and safe (the refusal is all that is printed);
    ``prepare_checkpoint`` checks it again against the built model."""
    check_writable(cfg.paths.output_dir)
    boundary.allow_from_config(cfg)  # users' own classes that the checkpoint may name
    requested = cfg.get("ckpt_path")
    if requested in ("hpc", "best"):
        return
    if requested not in (None, "last"):
        read_safe_checkpoint(Path(str(requested)), mmap=True)
        return
    found = find_resume_checkpoint(Path(cfg.paths.output_dir) / "checkpoints", cfg.paths.output_dir)
    if found is not None:
        validate_checkpoint(found.checkpoint, found.path)


def checkpoint_dir(cfg: DictConfig, built: RunParts) -> Path:
    """The ``LastCheckpoint``/``ModelCheckpoint`` dir, where resume looks."""
    for cls in (LastCheckpoint, ModelCheckpoint):
        for cb in built.callbacks:
            if isinstance(cb, cls) and cb.dirpath:
                return Path(cb.dirpath)
    return Path(cfg.paths.output_dir) / "checkpoints"


def _resume_command(cfg: DictConfig) -> str:
    skip = ("resume", "ckpt_path", "hydra.run.dir")
    own = [o for o in command_line_overrides() if o.split("=")[0].lstrip("+~") not in skip]
    args = [f"resume={cfg.paths.output_dir}", *own]
    return "python src/train.py " + " ".join(shlex.quote(a) for a in args)


def _verified(path: Path, built: RunParts) -> ResumePoint:
    point = ResumePoint(path, read_safe_checkpoint(path))
    assert built.model is not None
    target = f"the model configured for this run (net={built.model.hparams['net'].get('_target_')})"
    check_checkpoint_fits(point.checkpoint, built.model, path, target)
    spec = (point.checkpoint.get("hyper_parameters") or {}).get("spec")
    if spec:
        mismatch = DataSpec.from_dict(spec).incompatibilities(built.datamodule.spec)
        if mismatch:
            raise CheckpointError(
                f"checkpoint {path} was trained on other data than the configured "
                f"data={built.datamodule.__class__.__name__}: {'; '.join(mismatch)}. "
                f"The checkpoint was produced by {produced_by(point.checkpoint)}"
            )
    return point


def prepare_checkpoint(cfg: DictConfig, built: RunParts) -> str | None:
    """Set up checkpointing; return the ``ckpt_path`` for ``fit`` (``None``: a fresh start) or,
    with ``train=false``, the verified one to test. ``ConfigError``: too little free disk;
    ``CheckpointError``: the checkpoint is missing/unreadable/does not fit."""
    use_atomic_checkpoint_io(built.trainer)
    requested = cfg.get("ckpt_path")
    if not cfg.get("train"):
        if requested:
            _verified(Path(requested), built)
        return requested
    ckpt_dir = checkpoint_dir(cfg, built)
    dirs = [Path(cfg.paths.output_dir), ckpt_dir]
    dirs += [Path(str(lg.save_dir)) for lg in built.loggers if getattr(lg, "save_dir", None)]
    assert built.model is not None
    margin = float((cfg.get("extras") or {}).get("min_free_space_mb", 100))
    check_free_space(dirs, checkpoint_size_estimate(built.model), margin)
    if requested in ("hpc", "best"):  # Lightning's own keywords
        return str(requested)
    if requested not in (None, "last"):
        point = _verified(Path(str(requested)), built)
    else:
        found = find_resume_checkpoint(ckpt_dir, cfg.paths.output_dir)
        if found is None:
            if requested == "last" or cfg.get("resume"):
                raise CheckpointError(
                    f"nothing to resume: no checkpoint in {ckpt_dir}. resume=<dir> must be the run "
                    f"directory of an earlier run (the one holding checkpoints/last.ckpt)"
                )
            return None
        point = _verified(found.path, built)
    limits = built.trainer.max_epochs, built.trainer.max_steps
    check_resume_plan(point.checkpoint, built.model.hparams, *limits, point.path)
    where = f"{point.path} (epoch {point.epoch}, global step {point.global_step})"
    log.info("resuming from %s", where)
    continue_loggers(built.loggers, point.global_step)
    return str(point.path)


def _last_good(ckpt_dir: Path) -> str:
    try:
        point = find_resume_checkpoint(ckpt_dir)
    except CheckpointError:
        point = None
    if point is None:
        return "no checkpoint was written before"
    return f"the last good checkpoint is {point.path} (epoch {point.epoch}, global step {point.global_step})"


@contextlib.contextmanager
def guarded_fit(cfg: DictConfig, built: RunParts) -> Iterator[None]:
    """One clear message for each way a fit stops on purpose. A resumed run that had already
    finished fits nothing: it is validated once so it reports the metrics a full run does."""
    trainer = built.trainer
    try:
        yield
        validated = any(k.startswith("val/") for k in trainer.callback_metrics)
        if trainer.state.finished and not validated:
            log.info("training had already finished: validating the restored model")
            trainer.validate(built.model, datamodule=built.datamodule, verbose=False)
    except FloatingPointError as e:  # raised by the training step / LastCheckpoint
        last = _last_good(checkpoint_dir(cfg, built))
        raise TrainingError(
            f"training stopped: {e}. {last[0].upper()}{last[1:]}; continue "
            f"from it with clipping ({_resume_command(cfg)} trainer.gradient_clip_val=1.0) or start "
            f"over with a lower learning rate"
        ) from None
    except SystemExit as e:
        # Lightning turns Ctrl+C into sys.exit(1) after its on_exception hooks
        sigterm = isinstance(e, SIGTERMException)
        if not sigterm and not trainer.interrupted:
            raise
        msg = (
            f"stopped by {'SIGTERM' if sigterm else 'Ctrl+C'} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); {_last_good(checkpoint_dir(cfg, built))}. "
            f"Continue with: {_resume_command(cfg)}"
        )
        log.warning(msg)
        print(msg, file=sys.stderr)
        if sigterm and trainer.world_size > 1:
            from imgcls.engine.checkpoints.preemption import find

            agreement = find(built.callbacks)
            if agreement is not None:  # rank 0 exits first (its observer watches us)
                agreement.wait_for_launcher()
        raise SystemExit(SIGTERM_EXIT_CODE if sigterm else SIGINT_EXIT_CODE) from None
