"""Transfer-learning options of ``ImageClassifier`` for nets with a ``backbone`` and a ``head``.

``model.weights`` is checked, and may set the input normalization, before any data is decoded and
before the data spec reaches the model (so the checkpoint carries the weights' mean/std).
``model.cache_features`` / ``model.unfreeze_at_epoch`` are callbacks the model brings along."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.utils import get_class
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn
from torch.optim import Optimizer

from imgcls.errors import ConfigError
from imgcls.models.compiled import unwrap

log = logging.getLogger(__name__)


def _net_hook(model_cfg: Mapping[str, Any], name: str) -> tuple[Any, dict[str, Any]]:
    net_cfg = dict(model_cfg["net"])
    cls = get_class(str(net_cfg.pop("_target_")))
    return getattr(cls, name, None), net_cfg


def check_weights(model_cfg: Mapping[str, Any]) -> None:
    """Fail at once (``WeightsError``) when ``model.weights`` names a file that is not there."""
    weights = model_cfg.get("weights")
    if weights is None:
        return
    hook, net_cfg = _net_hook(model_cfg, "check_weights")
    if hook is None:
        raise ConfigError(
            f"model.weights={weights!r}: {model_cfg['net']['_target_']} has no pretrained weights; set model.weights=null"
        )
    hook(weights, **net_cfg)


def resolve_freeze(model_cfg: Any) -> None:
    """``model.net.freeze: null`` -> frozen with pretrained weights, whole net from scratch
    without (written into the config, so into the checkpoint). A frozen random backbone must be
    asked for (``model.net.freeze=true``) and is announced."""
    net = model_cfg.get("net") or {}
    if "freeze" not in net:
        return
    weights = model_cfg.get("weights")
    if net.get("freeze") is None:
        net["freeze"] = weights is not None
        log.info(
            "model.net.freeze=%s (%s)",
            str(net["freeze"]).lower(),
            "pretrained backbone frozen"
            if weights is not None
            else "model.weights=null: the whole net trains from scratch",
        )
    elif net.get("freeze") and weights is None:
        log.warning(
            "model.net.freeze=true with model.weights=null: a frozen RANDOM backbone, only the head "
            "trains (set model.net.freeze=false or null to train the whole net from scratch)"
        )


def use_weights_normalization(model_cfg: Mapping[str, Any], dm: Any) -> None:
    """Make ``dm`` normalize as the pretrained weights expect (before its spec reaches the model)."""
    weights = model_cfg.get("weights")
    hook, net_cfg = _net_hook(model_cfg, "input_normalization")
    if weights is None or hook is None:
        return
    norm = hook(weights, dm.in_channels, **net_cfg)
    if norm is None:
        return
    before = (dm.spec.mean, dm.spec.std)
    dm.set_normalization(*norm)
    if (dm.spec.mean, dm.spec.std) != before:
        log.info(
            "input normalization follows the weights %s: mean %s std %s (the data's was %s %s)",
            weights,
            dm.spec.mean,
            dm.spec.std,
            *before,
        )


class BackboneUnfreezing(BackboneFinetuning):
    """Lightning's ``BackboneFinetuning`` with the net's own freeze: Lightning's either trains
    BatchNorm parameters or stops their running statistics, and both change a backbone that must
    stay as loaded until the unfreeze epoch. BatchNorm stays frozen after it unless ``train_bn``
    (small fine-tuning batches make poor BN statistics)."""

    def freeze_before_training(self, pl_module: Any) -> None:
        pl_module.net.freeze_backbone()

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        super().finetune_function(pl_module, epoch, optimizer)
        # also after a resume past the unfreeze epoch (the param group is restored by Lightning)
        net = pl_module.net
        if epoch >= self.unfreeze_backbone_at_epoch and net.backbone_frozen:
            net.unfreeze_backbone(train_bn=self.train_bn)
            log.info(
                "epoch %d: backbone unfrozen (lr %.3g)", epoch, optimizer.param_groups[-1]["lr"]
            )


def parse_mode(value: Any) -> bool | str:
    """``true`` / ``false`` / ``auto`` (as YAML or a command line gives them)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", "null"):
        return False
    if text == "auto":
        return "auto"
    raise ConfigError(f"model.cache_features={value!r}: use true, false or auto")


def has_backbone(net: nn.Module) -> bool:
    net = unwrap(net)
    return isinstance(getattr(net, "backbone", None), nn.Module) and hasattr(net, "freeze_backbone")


def transfer_plan(net: nn.Module, hparams: Mapping[str, Any]) -> tuple[int | None, bool | str]:
    """(unfreeze epoch, cache mode) after checking they fit the net and each other."""
    unfreeze = hparams.get("unfreeze_at_epoch")
    cache = parse_mode(hparams.get("cache_features", False))
    if not has_backbone(net):
        if unfreeze is not None or cache is True:
            raise ConfigError(
                f"model.unfreeze_at_epoch / model.cache_features need a net with a frozen backbone; "
                f"{type(net).__name__} has none"
            )
        return None, False
    if unfreeze is not None:
        if cache is True:
            raise ConfigError(
                "model.cache_features=true cannot be combined with model.unfreeze_at_epoch: "
                "the features change once the backbone trains"
            )
        return int(unfreeze), False
    if not getattr(unwrap(net), "backbone_frozen", False):
        if cache is True:
            raise ConfigError(
                "model.cache_features=true needs a frozen backbone (model.net.freeze)"
            )
        return None, False
    return None, cache


def transfer_callbacks(module: Any) -> list[L.Callback]:
    """The callbacks the transfer options ask for (the builder attaches them)."""
    unfreeze, cache = transfer_plan(module.net, module.hparams)
    if unfreeze is not None:
        return [
            BackboneUnfreezing(
                unfreeze_backbone_at_epoch=unfreeze,
                backbone_initial_ratio_lr=float(module.hparams.get("backbone_lr_ratio", 0.1)),
                train_bn=False,
            )
        ]
    if cache is not False:
        from imgcls.engine.feature_cache import FeatureCache

        return [FeatureCache(cache_dir=getattr(module, "cache_dir", None), mode=cache)]
    return []
