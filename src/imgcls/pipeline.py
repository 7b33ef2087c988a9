"""Train and evaluate tasks: what the thin entry points in ``src/`` run."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from imgcls.builder import Built, build, build_datamodule, build_trainer
from imgcls.checkpointing.safe_config import register_nets_from_config
from imgcls.data.base_datamodule import NO_TEST_SPLIT
from imgcls.errors import ConfigError, find_user_error
from imgcls.fault_tolerance import (
    check_resume_source,
    check_run_dir,
    guarded_fit,
    prepare_checkpoint,
)
from imgcls.models.classifier import count_parameters
from imgcls.run_data import use_run_data
from imgcls.utils.checkpoint import load_classifier, use_tta
from imgcls.utils.config import flatten, print_config_tree, to_plain
from imgcls.utils.console import check_required, log_run_header, quiet_lightning
from imgcls.utils.job_process import (
    record_job_error,
    run_job_process,
    should_isolate,
    stop_ranks_on_error,
)
from imgcls.utils.trackers import finish_trackers

log = logging.getLogger(__name__)


def apply_extras(cfg: DictConfig) -> None:
    """Warnings policy and config printing, done once before anything is built."""
    # In-memory tensors are fastest with 0 workers; Lightning's hint says otherwise.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # ImageClassifier logs torchmetrics results, which compute() already synced across ranks.
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    # A frozen backbone stays in eval mode on purpose (BatchNorm statistics fixed).
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")
    extras = cfg.get("extras") or {}
    register_nets_from_config(cfg)  # users' own nets that checkpoints may name
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    quiet_lightning()
    if _is_rank_zero():
        log_run_header(cfg)
    if extras.get("print_config") and _is_rank_zero():
        out = Path(cfg.paths.output_dir) / "config_tree.log"
        print_config_tree(cfg, save_to=out, echo=False)


def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def log_hyperparameters(
    cfg: DictConfig,
    model: L.LightningModule,
    loggers: list,
    metrics: tuple[str, ...] | None = None,
) -> None:
    """Send the run's config and parameter counts to every logger (TensorBoard hparams tab).

    ``metrics``: the HParams columns (default ``HPARAM_METRICS``); without a labeled test split
    the caller leaves ``test/*`` out, so no column suggests a test score exists.
    """
    if not loggers:
        return
    trainable, total = count_parameters(model)
    params = {
        "model": to_plain(cfg.get("model")) or to_plain(dict(model.hparams)),
        "data": to_plain(cfg.get("data")),
        "trainer": to_plain(cfg.get("trainer")),
        "seed": cfg.get("seed"),
        "task_name": cfg.get("task_name"),
        "tags": to_plain(cfg.get("tags")),
        "ckpt_path": cfg.get("ckpt_path"),
        "params/total": total,
        "params/trainable": trainable,
        "params/non_trainable": total - trainable,
    }
    for logger in loggers:
        logger.log_hyperparams(params)
        if isinstance(logger, TensorBoardLogger):
            write_tensorboard_hparams(logger, params, metrics or HPARAM_METRICS)


# Metrics the TensorBoard HParams view shows against each run's hyper-parameters.
HPARAM_METRICS = ("val/acc_best", "test/acc")


@rank_zero_only
def write_tensorboard_hparams(
    logger: TensorBoardLogger, params: dict[str, Any], metrics: tuple[str, ...]
) -> None:
    """Write the HParams session with ``metrics`` as its columns.

    Lightning writes this session only when given metric *values* (logging them as scalars at
    step 0); the values TensorBoard shows come from the runs' own scalars with these tags, so
    only the tags are declared here and no fake point enters the curves.
    """
    from torch.utils.tensorboard.summary import hparams

    flat = {}
    for key, value in flatten(params).items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    exp, ssi, sei = hparams(flat, dict.fromkeys(metrics, 0.0))
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)
    logger.experiment.flush()


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    path = getattr(cb, "best_model_path", "") if cb is not None else ""
    return path or None


def hparam_metrics(has_test: bool) -> tuple[str, ...]:
    """The HParams columns for a run: ``test/*`` only with a labeled test split."""
    return (
        HPARAM_METRICS
        if has_test
        else tuple(m for m in HPARAM_METRICS if not m.startswith("test/"))
    )


def _test_note(has_test: bool) -> dict[str, Any]:
    """What metrics.json says about the test split (read back by the sweep tables)."""
    return {} if has_test else {"test": NO_TEST_SPLIT}


def _write_summary(cfg: DictConfig, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    if not _is_rank_zero():
        return
    out = Path(cfg.paths.output_dir) / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"metrics": metrics, **extra}, indent=2, sort_keys=True))
    log.info("summary written to %s", out)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, then test the best checkpoint; returns all final metrics.

    A run dir that already holds checkpoints (``resume=<run dir>``, a requeued job) continues
    from the newest readable one (see ``imgcls.fault_tolerance``).
    """
    check_run_dir(cfg)
    apply_extras(cfg)
    check_resume_source(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    built = build(cfg)
    assert built.model is not None
    ckpt_path = prepare_checkpoint(cfg, built)
    has_test = built.datamodule.has_labeled_test
    log_hyperparameters(cfg, built.model, built.loggers, hparam_metrics(has_test))
    with stop_ranks_on_error(built.trainer):
        metrics = _fit_and_test(cfg, built, ckpt_path, has_test)
    finish_trackers(built.loggers)
    best = _best_checkpoint(built.trainer)
    extra = {
        "best_checkpoint": best,
        "output_dir": str(cfg.paths.output_dir),
        "tta": built.model.tta,
        **_test_note(has_test),
    }
    _write_summary(cfg, metrics, extra)
    for name in sorted(metrics):
        log.info("%s = %.5f", name, metrics[name])
    return metrics


def _fit_and_test(
    cfg: DictConfig, built: Built, ckpt_path: str | None, has_test: bool
) -> dict[str, float]:
    trainer = built.trainer
    metrics: dict[str, float] = {}
    if cfg.get("train"):
        log.info("starting training")
        with guarded_fit(cfg, built):
            trainer.fit(
                built.model, datamodule=built.datamodule, ckpt_path=ckpt_path, weights_only=True
            )
        metrics.update(_floats(trainer.callback_metrics))
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
        trainer.test(built.model, datamodule=built.datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(_floats(trainer.callback_metrics))
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint; the model is rebuilt from the checkpoint alone, the data is the
    checkpoint's run's own unless ``data=`` is given (see ``imgcls.run_data``).

    Without a labeled test split the validation split is scored, under ``val/*`` names.
    """
    apply_extras(cfg)
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "eval needs a checkpoint: python src/eval.py ckpt_path=<path/to/file.ckpt>"
        )
    model = use_tta(load_classifier(cfg.ckpt_path), cfg)
    log.info(use_run_data(cfg))
    dm = build_datamodule(cfg)
    mismatch = model.spec.incompatibilities(dm.spec)
    if mismatch:
        raise ConfigError(
            f"checkpoint {cfg.ckpt_path} was trained on different data than data={cfg.data._target_}: "
            + "; ".join(mismatch)
        )
    # normalize as the model was trained (e.g. with its pretrained weights' statistics)
    dm.set_normalization(model.spec.mean, model.spec.std)
    trainer, _, loggers = build_trainer(cfg)
    has_test = dm.has_labeled_test
    log_hyperparameters(cfg, model, loggers, hparam_metrics(has_test))
    if has_test:
        trainer.test(model, datamodule=dm)
    else:
        log.warning("%s: scoring the validation split (val/* metrics, no test/*)", NO_TEST_SPLIT)
        trainer.validate(model, datamodule=dm)
    metrics = _floats(trainer.callback_metrics)
    extra = {"checkpoint": str(cfg.ckpt_path), "tta": model.tta, **_test_note(has_test)}
    finish_trackers(loggers)
    _write_summary(cfg, metrics, extra)
    for name in sorted(metrics):
        log.info("%s = %.5f", name, metrics[name])
    return metrics


def run_task(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | None:
    """Run a task for an entry point; user errors print one message, not a traceback.

    Returns the ``optimized_metric`` value for Hydra sweepers. A multirun job whose trainer
    starts DDP rank processes runs as its own process group (``imgcls.utils.job_process``).
    """
    if _in_multirun() and should_isolate(cfg):
        return _optimized_value(cfg, run_job_process(cfg))
    try:
        check_required(cfg)
        return _optimized_value(cfg, task(cfg))
    except Exception as exc:
        e = find_user_error(exc)
        record_job_error(e or exc)  # for the sweep, when this is a job's own process
        if e is None:
            raise
        if _in_multirun():
            log.error("%s: %s", type(e).__name__, e)
            # the sweeper records the job as failed (with this message) and runs the others
            raise e from None
        _log_to_files(f"{type(e).__name__}: {e}")  # the run's log keeps it; the console once
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _log_to_files(message: str) -> None:
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name in metrics:
        return metrics[name]
    message = f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}"
    if str(name).startswith("test/") and not any(k.startswith("test/") for k in metrics):
        message += f" ({NO_TEST_SPLIT}: set data.test_fraction, or optimize a val/* metric)"
    if _in_multirun():  # a sweeper cannot rank this job
        raise ConfigError(message)
    log.warning(message)  # a single run has finished; its results stand
    return None


def _in_multirun() -> bool:
    try:
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra context (tests calling tasks directly)
        return False


__all__ = ["train", "evaluate", "run_task"]
