"""The one place that turns a composed config into objects; shared by every entry point."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from imgcls.data.base_datamodule import ImageDataModule
from imgcls.engine import boundary
from imgcls.engine.checkpoints.resume import ReplanSchedulerOnResume
from imgcls.models.classifier import ImageClassifier
from imgcls.models.transfer import (
    check_weights,
    resolve_freeze,
    transfer_callbacks,
    use_weights_normalization,
)
from imgcls.utils.cuda_probe import skip_failing_nvml_probe
from imgcls.utils.ranks import local_rank

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    """Everything a run needs, built from one config."""

    datamodule: ImageDataModule
    model: ImageClassifier | None
    trainer: L.Trainer
    callbacks: list[L.Callback] = field(default_factory=list)
    loggers: list[Logger] = field(default_factory=list)


def build_datamodule(cfg: DictConfig, dm: ImageDataModule | None = None) -> ImageDataModule:
    """Instantiate ``cfg.data`` (or take ``dm``, built from a checkpoint's data config by the
    trust boundary) and run its validation/loading once (before any training)."""
    log.info("data: %s", _name(cfg.data))
    if dm is None:
        dm = instantiate(cfg.data)
        store_data_config(dm, cfg)
    if local_rank() == 0:  # as Lightning does: the other ranks' setup waits for its result
        dm.prepare_data()
    dm.setup()
    return dm


def store_data_config(dm: ImageDataModule, cfg: DictConfig) -> None:
    """The resolved data config goes into every checkpoint (``datamodule_hyper_parameters``), so
    eval finds the run's data without its run dir."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dm.save_hyperparameters(data if isinstance(data, dict) else {}, logger=False)


def _name(conf: DictConfig) -> str:
    """A config's class name (the module path is in config_tree.log): lines fit 80 columns."""
    return str(conf._target_).rsplit(".", 1)[-1]


def build_model(cfg: DictConfig, dm: ImageDataModule) -> ImageClassifier:
    """Instantiate ``cfg.model`` with the sizes and class names taken from the data (Hydra builds
    the user's net, optimizer and scheduler configs: ``_partial_``, nested targets)."""
    log.info("model: %s (net %s)", _name(cfg.model), _name(cfg.model.net))
    use_weights_normalization(cfg.model, dm)
    resolve_freeze(cfg.model)
    model: ImageClassifier = instantiate(cfg.model, spec=dm.spec.to_dict(), _recursive_=False)
    try:  # what its checkpoints will hold must pass the trust boundary
        boundary.check_classifier(dict(model.hparams), "model")
    except boundary.UnsafeCheckpointError as e:
        log.warning("eval/predict/export will refuse this model's checkpoints: %s", e)
    log.info("parameters: {:,} trainable / {:,} total".format(*count_parameters(model)))
    if model.hparams["compile"]:
        model.net.compile()  # in place: checkpoints keep the plain net's keys
    return model


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total)"""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _before_checkpoints(trainer: L.Trainer, callbacks: list[L.Callback]) -> None:
    """Insert ``callbacks`` ahead of the checkpoint callbacks, as Lightning orders a model's own
    (the checkpoint then saves what they changed in the same hook)."""
    cbs = trainer.callbacks  # type: ignore[attr-defined]
    first = next((i for i, c in enumerate(cbs) if isinstance(c, Checkpoint)), len(cbs))
    cbs[first:first] = callbacks


def _instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Every entry with a ``_target_`` of a callbacks/logger group."""
    confs = {
        k: c for k, c in (group or {}).items() if isinstance(c, DictConfig) and "_target_" in c
    }
    for name, conf in confs.items():
        log.info("%s: %s (%s)", what, name, _name(conf))
    return [instantiate(conf) for conf in confs.values()]


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, list[L.Callback], list[Logger]]:
    skip_failing_nvml_probe()  # a failed dlopen on every optimizer step on driverless machines
    callbacks = _instantiate_group(cfg.get("callbacks"), "callback")
    loggers = _instantiate_group(cfg.get("logger"), "logger")
    if not loggers:
        # LearningRateMonitor refuses to run without a logger; logger=none should just work.
        if any(isinstance(c, LearningRateMonitor) for c in callbacks):
            log.info("no logger: LearningRateMonitor disabled")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.world_size > 1:  # ranks stop on SIGTERM together (nothing to agree on alone)
        from imgcls.engine.checkpoints.preemption import SigtermAgreement

        agreement = SigtermAgreement()
        _before_checkpoints(trainer, [agreement])  # they act on the agreed flag
        callbacks.append(agreement)
    return trainer, callbacks, loggers


def build(cfg: DictConfig, with_model: bool = True) -> RunParts:
    """Datamodule (validated), model sized from it, and the trainer with callbacks and loggers."""
    if with_model:
        check_weights(cfg.model)  # a missing pretrained file stops us before any data is decoded
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm) if with_model else None
    trainer, callbacks, loggers = build_trainer(cfg)
    if model is not None:  # what the model's options ask for, and re-planning a resume
        _before_checkpoints(trainer, [*transfer_callbacks(model), ReplanSchedulerOnResume()])
    return RunParts(dm, model, trainer, callbacks, loggers)
