"""``python src/train.py tune=lr``: Lightning's learning-rate range test on the configured model
and data, the suggestion printed and plotted (``lr_find.png``), optionally trained with.

Lightning's finder saves the model to a temporary checkpoint and restores it afterwards (a full
``torch.load``, outside this project's ``weights_only=True`` loading). Here it runs on a copy of
the model in a throwaway single-device Trainer whose checkpoint IO writes and reads weights-only
files in a temp dir; the model that trains is never touched by it."""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig

from imgcls.builder import RunParts
from imgcls.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


class _WeightsOnlyIO(TorchCheckpointIO):
    """The finder's temporary checkpoint, read back with ``weights_only=True``."""

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def _probe_trainer(cfg: DictConfig, root: str) -> Any:
    """The configured trainer on one device, without callbacks, loggers or checkpoints, running
    ``tune.num_training`` steps over as many epochs as that takes (small sets)."""
    return instantiate(
        cfg.trainer,
        max_epochs=-1,
        max_steps=int(cfg.tune.num_training),
        devices=1,
        num_nodes=1,
        strategy="auto",
        callbacks=[],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=root,
        plugins=[_WeightsOnlyIO()],
    )


def find_lr(cfg: DictConfig, built: RunParts) -> float:
    """Run the range test; returns the suggested lr (applied to the model with ``tune.apply``)."""
    tune = cfg.tune
    if tune.get("mode", "lr") != "lr":
        raise ConfigError(f"tune.mode={tune.mode!r}: only 'lr' (the learning-rate finder) exists")
    assert built.model is not None
    with tempfile.TemporaryDirectory(prefix="lr_find_") as root:
        trainer = _probe_trainer(cfg, root)
        finder = Tuner(trainer).lr_find(
            copy.deepcopy(built.model),
            datamodule=built.datamodule,
            min_lr=float(tune.min_lr),
            max_lr=float(tune.max_lr),
            num_training=int(tune.num_training),
            early_stop_threshold=tune.get("early_stop_threshold"),
            update_attr=False,
        )
    lr = _suggest(finder, built.model.hparams.get("scheduler"))
    if lr is None:
        raise TrainingError(
            "the learning-rate finder gave no suggestion (too few steps before the loss "
            "diverged or the data ran out); raise tune.num_training or lower tune.max_lr"
        )
    assert finder is not None  # _suggest returned a rate
    out = Path(cfg.paths.output_dir) / "lr_find.png"
    fig: Any = finder.plot(suggest=True, show=False)
    fig.axes[0].set_title(f"learning-rate range test: suggestion {lr:.3g}")
    fig.savefig(out, dpi=100)
    print(f"suggested learning rate: {lr:.6g} (loss vs lr: {out})")
    log.info(
        "lr finder: suggestion %.6g after %d steps; plot %s", lr, len(finder.results["lr"]), out
    )
    if tune.get("apply"):
        apply_lr(built.model, lr)
    return float(lr)


def _suggest(finder: Any, scheduler: Any) -> float | None:
    """Lightning's suggestion (the steepest loss descent); for OneCycle, whose lr is a peak that
    it only touches mid-run, a tenth of the lr at the lowest loss (Smith's 1cycle rule, fastai's
    ``lr_min / 10``): the steepest point is a starting lr, too low as a peak."""
    if finder is None:
        return None
    steep = finder.suggestion()
    if steep is None or "OneCycle" not in str((scheduler or {}).get("_target_", "")):
        return steep
    lrs, losses = finder.results["lr"], finder.results["loss"]
    best = min(range(10, max(11, len(losses) - 1)), key=lambda i: losses[i], default=None)
    return max(steep, lrs[best] / 10) if best is not None and best < len(lrs) else steep


def apply_lr(model: Any, lr: float) -> None:
    """``lr`` becomes the optimizer's lr and, when set explicitly, OneCycle's ``max_lr`` (the
    peak); the checkpoint's hyper-parameters record it."""
    model.hparams["optimizer"]["lr"] = lr
    sched = model.hparams.get("scheduler") or {}
    if sched.get("max_lr") is not None:
        sched["max_lr"] = lr
    log.info("training with the suggested learning rate %.6g", lr)
