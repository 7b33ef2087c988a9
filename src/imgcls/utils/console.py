"""A first run that reads well: a short header instead of the whole config, no promotional tips,
and a missing required argument as one line."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgcls.errors import ConfigError

log = logging.getLogger(__name__)

# Lightning's rank_zero_info goes through one of these (whichever imported last)
_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    """Lightning 2.6 advertises litlogger/litmodels on every Trainer ("💡 Tip: ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Drop the tips and a deprecation that Lightning's own code triggers (not ours to fix)."""
    for name in _INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    # lightning/pytorch/utilities/_pytree.py against torch 2.14's pytree
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\).*")


def check_required(cfg: DictConfig) -> None:
    """``???`` values left unset: one error naming them, before anything starts."""
    # Hydra's own node holds sweep-only interpolations (hydra.job.num) that a single run leaves
    # unresolvable; it has no ??? of ours
    ours = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    missing = sorted(OmegaConf.missing_keys(ours))
    if missing:
        needed = " ".join(f"{key}=<value>" for key in missing)
        raise ConfigError(f"missing required argument(s): {', '.join(missing)} (add {needed})")


def command_line_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ValueError, ImportError):  # no Hydra context (tests calling tasks directly)
        return []


def _target(node: Any) -> str:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else "-"


def log_run_header(cfg: DictConfig) -> None:
    """Run dir, overrides and the few choices that define the run (the tree: config_tree.log)."""
    data, model, trainer = cfg.get("data"), cfg.get("model"), cfg.get("trainer")
    net = model.get("net") if isinstance(model, DictConfig) else None
    log.info("run dir: %s", cfg.paths.output_dir)
    log.info("overrides: %s", " ".join(command_line_overrides()) or "(none)")
    parts = [f"data={_target(data)}", f"model={_target(model)}/{_target(net)}"]
    if isinstance(data, DictConfig) and "batch_size" in data:
        parts.append(f"batch={data.batch_size}")
    if isinstance(trainer, DictConfig):
        parts.append(f"trainer={_target(trainer)} epochs={trainer.get('max_epochs')}")
    loggers = cfg.get("logger") or {}
    parts.append(f"loggers={','.join(loggers) or 'none'}")
    log.info("config: %s (full tree: config_tree.log)", " ".join(parts))
