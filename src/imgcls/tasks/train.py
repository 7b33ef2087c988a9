"""The train task: fit, then test the best checkpoint (``python src/train.py``)."""

from __future__ import annotations

import logging

import lightning as L
from omegaconf import DictConfig

from imgcls.builder import RunParts, build
from imgcls.data.base_datamodule import NO_TEST_SPLIT
from imgcls.engine.checkpoints.fit_guard import check_before_build, guarded_fit, prepare_checkpoint
from imgcls.runs.history import watch_run
from imgcls.runs.record import recorded
from imgcls.tasks.report import (
    floats,
    hparam_metrics,
    log_hyperparameters,
    report,
    report_data_checks,
    report_run,
    test_note,
)
from imgcls.tasks.run import apply_extras, in_multirun, stop_ranks_on_error
from imgcls.utils.console import final_lines, show_final
from imgcls.utils.ranks import is_rank_zero
from imgcls.utils.trackers import finish_trackers

log = logging.getLogger(__name__)


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    return getattr(trainer.checkpoint_callback, "best_model_path", "") or None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns all final metrics. A run dir that holds
    checkpoints (``resume=<run dir>``, a requeued job) continues from the newest readable one."""
    check_before_build(cfg)
    apply_extras(cfg)
    with recorded(cfg, "train") as record:
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        built = build(cfg)
        assert built.model is not None
        tuned = {}
        if cfg.get("tune"):
            from imgcls.tasks.lr_find import find_lr

            tuned["tune/lr"] = find_lr(cfg, built)
            if not cfg.tune.get("apply"):  # the suggestion alone: nothing trained
                report(cfg, tuned, {"output_dir": str(cfg.paths.output_dir)})
                return tuned
        record.attach(
            built.trainer, watch_run(built.trainer, built.datamodule, cfg.paths.output_dir)
        )
        ckpt_path = prepare_checkpoint(cfg, built)
        has_test = built.datamodule.has_labeled_test
        log_hyperparameters(cfg, built.model, built.loggers, hparam_metrics(has_test))
        checks = report_data_checks(cfg, built.datamodule, built.loggers)
        with stop_ranks_on_error(built.trainer):
            metrics = _fit_and_test(cfg, built, ckpt_path, has_test) | tuned
        finish_trackers(built.loggers)
        best = _best_checkpoint(built.trainer)
        extra = {
            "best_checkpoint": best,
            "output_dir": str(cfg.paths.output_dir),
            "tta": built.model.tta,
            **test_note(has_test),
            **checks,
        }
        report_run(cfg, built.trainer, metrics, extra, record)
    if is_rank_zero() and not in_multirun():  # a sweep's jobs: the sweep's summary.md instead
        show_final(final_lines(cfg, metrics, best))
    return metrics


def _fit_and_test(
    cfg: DictConfig, built: RunParts, ckpt_path: str | None, has_test: bool
) -> dict[str, float]:
    trainer = built.trainer
    assert built.model is not None
    metrics: dict[str, float] = {}
    if cfg.get("train"):
        log.info("starting training")
        with guarded_fit(cfg, built):
            trainer.fit(
                built.model, datamodule=built.datamodule, ckpt_path=ckpt_path, weights_only=True
            )
        metrics.update(floats(trainer.callback_metrics))
        best = _best_checkpoint(trainer)
        if built.model.calibrated and best:
            from imgcls.models.calibration import calibrate_checkpoint

            t = calibrate_checkpoint(trainer, built.model, built.datamodule, best)
            metrics["calibration/temperature"] = t
    if cfg.get("test") and not has_test:
        log.warning(
            "%s: no test/* metrics (val/* chose the checkpoint, so they are not a test score); "
            "set data.test_fraction=0.1 to hold out a test split",
            NO_TEST_SPLIT,
        )
    elif cfg.get("test"):
        ckpt = _best_checkpoint(trainer) if cfg.get("train") else ckpt_path
        if ckpt is None:
            log.warning("no checkpoint to test (checkpointing off?): testing the current weights")
        else:
            log.info("testing checkpoint %s", ckpt)
        trainer.test(
            built.model,
            datamodule=built.datamodule,
            ckpt_path=ckpt,
            weights_only=True,
            verbose=False,  # the run's last lines show the result; metrics.json has them all
        )
        metrics.update(floats(trainer.callback_metrics))
    return metrics
