"""LR schedulers from their configs (built by ``make``: Hydra or the trust boundary), sized by the trainer: ``total_steps`` (OneCycleLR) from
``trainer.estimated_stepping_batches``, ``max_lr`` (unset or null) from the optimizer's lr (one
LR knob per recipe); a composite (``SequentialLR``, ``model/scheduler=warmup_cosine``) is a
warmup child, then a decay child for the rest (lengths set in a child's config are kept)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from imgcls.engine.boundary import COMPOSITE, PLAN_KEYS
from imgcls.errors import ConfigError

Make = Callable[[Mapping[str, Any], str], Any]  # (config, key path) -> partial of its class

# the argument that says how many scheduler steps a child lasts
LENGTH_ARGS = dict.fromkeys(("LinearLR", "ConstantLR", "PolynomialLR"), "total_iters")
LENGTH_ARGS["CosineAnnealingLR"] = "T_max"


def run_length(trainer: L.Trainer, interval: str) -> tuple[int, float]:
    """(scheduler steps in the run, scheduler steps per epoch) for ``interval``."""
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    if interval == "epoch":
        if epochs is None:
            raise ConfigError("model.scheduler_interval=epoch needs trainer.max_epochs")
        return epochs, 1.0
    total = int(trainer.estimated_stepping_batches)
    return total, total / epochs if epochs else float(total)


def warmup_steps(cfg: Mapping[str, Any], total: int, per_epoch: float) -> int:
    """Warmup length in scheduler steps (``warmup_epochs`` wins over ``warmup_fraction``)."""
    epochs, fraction = cfg.get("warmup_epochs"), cfg.get("warmup_fraction")
    if epochs is not None:
        steps = round(float(epochs) * per_epoch)
    elif fraction is not None:
        if not 0.0 <= float(fraction) < 1.0:
            raise ConfigError(f"model.scheduler.warmup_fraction={fraction} is not in [0, 1)")
        steps = round(float(fraction) * total)
    else:
        raise ConfigError("model.scheduler needs warmup_fraction or warmup_epochs")
    if total < 2:  # a smoke run (fast_dev_run, 1 step): nothing to plan, only to run
        return 1
    steps = max(steps, 1)  # a fraction that rounds to 0 still warms up for one step
    if steps >= total:
        raise ConfigError(
            f"model.scheduler: warmup of {steps} step(s) leaves nothing of a {total}-step run; "
            f"use a shorter warmup_fraction/warmup_epochs"
        )
    return steps


def _length_extra(child: Any, steps: int) -> dict[str, Any]:
    arg = LENGTH_ARGS.get(child.func.__name__)
    return {arg: steps} if arg and arg not in child.keywords else {}


def build_scheduler(
    cfg: Mapping[str, Any], optimizer: Optimizer, trainer: L.Trainer, interval: str, make: Make
) -> LRScheduler:
    """The scheduler ``cfg`` names, sized to this run."""
    path = "model.scheduler"
    if cfg.get("_target_") != COMPOSITE:
        made = make(cfg, path)
        extra: dict[str, Any] = {}
        params = inspect.signature(made.func).parameters
        if "total_steps" in params and "total_steps" not in cfg:
            extra["total_steps"] = int(trainer.estimated_stepping_batches)
        if "max_lr" in params and cfg.get("max_lr") is None:
            extra["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        return made(optimizer, **extra)
    own = {k: v for k, v in cfg.items() if k not in PLAN_KEYS and k != "schedulers"}
    children = [make(c, f"{path}.schedulers[{i}]") for i, c in enumerate(cfg["schedulers"])]
    if len(children) != 2 and "milestones" not in cfg:
        raise ConfigError(
            f"model.scheduler: SequentialLR without milestones takes 2 schedulers (warmup, "
            f"decay), got {len(children)}"
        )
    total, per_epoch = run_length(trainer, interval)
    if "milestones" in cfg:
        built = [c(optimizer) for c in children]
        return make(own, path)(optimizer, schedulers=built)
    warm = warmup_steps(cfg, total, per_epoch)
    lengths = [_length_extra(children[0], warm), _length_extra(children[1], max(total - warm, 1))]
    built = [c(optimizer, **n) for c, n in zip(children, lengths, strict=True)]
    return make(own, path)(optimizer, schedulers=built, milestones=[warm])
