"""The eval task: test a checkpoint on its run's data (``python src/eval.py ckpt_path=...``)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from imgcls.builder import build_datamodule, build_trainer
from imgcls.data.base_datamodule import NO_TEST_SPLIT
from imgcls.errors import ConfigError
from imgcls.models.load import load_classifier, use_tta
from imgcls.runs.fingerprint import checkpoint_fingerprint, compare_line
from imgcls.runs.history import watch_run
from imgcls.runs.record import RunRecord, recorded
from imgcls.tasks.checkpoint_data import data_hint, use_run_data
from imgcls.tasks.report import floats, hparam_metrics, log_hyperparameters, report_run, test_note
from imgcls.tasks.run import apply_extras
from imgcls.utils.trackers import finish_trackers

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint: the model from the checkpoint alone, the data its run's own unless
    ``data=`` is given; without a labeled test split the val split is scored (``val/*``). Data
    whose fingerprint differs from the checkpoint's training data is named in one log line."""
    apply_extras(cfg)
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "eval needs a checkpoint: python src/eval.py ckpt_path=<path/to/file.ckpt>"
        )
    with recorded(cfg, "eval") as record:
        metrics = _evaluate(cfg, record)
    return metrics


def _evaluate(cfg: DictConfig, record: RunRecord) -> dict[str, float]:
    model = use_tta(load_classifier(cfg.ckpt_path), cfg)
    stored, where = use_run_data(cfg)
    log.info(where)
    dm = build_datamodule(cfg, stored)
    mismatch = model.spec.incompatibilities(dm.spec)
    if mismatch:
        raise ConfigError(
            f"checkpoint {cfg.ckpt_path} was trained on different data than data={cfg.data._target_}: "
            + "; ".join(mismatch)
            + f" ({data_hint(cfg.ckpt_path)})"
        )
    # normalize as the model was trained (e.g. with its pretrained weights' statistics)
    dm.set_normalization(model.spec.mean, model.spec.std)
    trainer, _, loggers = build_trainer(cfg)
    fingerprint = watch_run(trainer, dm, cfg.paths.output_dir)
    record.attach(trainer, fingerprint)
    if fingerprint is not None and (
        line := compare_line(checkpoint_fingerprint(cfg.ckpt_path), fingerprint, "the data")
    ):
        log.warning(line)
    has_test = dm.has_labeled_test
    log_hyperparameters(cfg, model, loggers, hparam_metrics(has_test))
    if has_test:
        trainer.test(model, datamodule=dm)
    else:
        log.warning("%s: scoring the validation split (val/* metrics, no test/*)", NO_TEST_SPLIT)
        trainer.validate(model, datamodule=dm)
    metrics = floats(trainer.callback_metrics)
    extra = {"checkpoint": str(cfg.ckpt_path), "tta": model.tta, **test_note(has_test)}
    finish_trackers(loggers)
    report_run(cfg, trainer, metrics, extra, record)
    return metrics
