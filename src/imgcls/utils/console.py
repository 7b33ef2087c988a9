"""A first run that reads well: a short header instead of the whole config, no promotional tips,
and a missing required argument as one line."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgcls.errors import ConfigError

log = logging.getLogger(__name__)

# Lightning's rank_zero_info goes through one of these (whichever imported last); its seed line
_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
)
# Lightning's info lines a user cannot act on: advertising (litlogger/litmodels), the summary
# callback we configured, the checkpoint test reloads (the run logs which), devices that do not
# exist, the seed (the header has it), the end of max_epochs
_DROPPED = (
    "💡 Tip",
    "Trainer already configured with model summary callbacks",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
    "GPU available: False",
    "TPU available: False",
    "HPU available: False",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "`Trainer.fit` stopped: `max_epochs=",
    "Seed set to",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED)


def quiet_lightning() -> None:
    """Drop Lightning's lines above and a deprecation its own code triggers (not ours to fix)."""
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
    ours = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
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
    parts.append(f"seed={cfg.get('seed')}")
    loggers = cfg.get("logger") or {}
    parts.append(f"loggers={','.join(loggers) or 'none'}")
    log.info("config: %s (full tree: config_tree.log)", " ".join(parts))


def log_to_files(message: str, level: int = logging.INFO) -> None:
    """Into the run's log file only (the console shows the message its own way)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _short(path: Any) -> str:
    """Relative to the working directory when below it: commands a user can paste."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def final_lines(cfg: DictConfig, metrics: dict[str, float], checkpoint: str | None) -> list[str]:
    """The end of a training run: where it is, its result, what to run next. A list, so that
    other steps can add their line before ``show_final`` prints it."""
    run_dir = _short(cfg.paths.output_dir)
    shown = [k for k in ("test/acc", "val/acc_best") if k in metrics]
    result = ", ".join(f"{k} {metrics[k]:.4f}" for k in shown) or "no accuracy logged"
    lines = [f"run dir: {run_dir}", f"result: {result}"]
    report = Path(cfg.paths.output_dir) / "report.html"
    lines += [f"report: {_short(report)} (opens from disk)"] if report.is_file() else []
    nxt = []
    if checkpoint:
        ckpt = _short(checkpoint)
        nxt += [f"python src/eval.py ckpt_path={ckpt}"]
        nxt += [f"python src/predict.py ckpt_path={ckpt} input=<image, folder or CSV>"]
    if "tensorboard" in (cfg.get("logger") or {}):
        nxt += [f"tensorboard --logdir {_short(Path(cfg.paths.output_dir) / 'tensorboard')}"]
    return lines + (["next:", *(f"  {c}" for c in nxt)] if nxt else [])


def show_final(lines: list[str]) -> None:
    """Plain lines on stdout (no log prefix: paths and commands copy whole); the log keeps them."""
    for line in lines:
        log_to_files(line)
    print("\n".join(lines), file=sys.stdout, flush=True)
