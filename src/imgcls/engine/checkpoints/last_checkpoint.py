"""``checkpoints/last.ckpt``: always the newest resumable, finite training state.

Lightning's ``save_last`` refreshes it only when the monitored metric improves. This callback
writes it every ``every_n_train_steps`` steps, at every epoch end (after the best-model checkpoint
updated its state), on SIGTERM / Ctrl+C and at training end; never with non-finite weights; with
the RNG states so a resumed run draws the same numbers; as plain data (``weights_only=True``)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from imgcls.utils.console import command_line_overrides

log = logging.getLogger(__name__)


class NonFiniteWeightsError(FloatingPointError):
    """Parameters became NaN/inf (the optimizer step before diverged)."""


def first_non_finite(module: torch.nn.Module) -> str | None:
    """Name of the first trainable parameter holding NaN/inf, else ``None``."""
    for name, p in module.named_parameters():
        if p.requires_grad and not bool(torch.isfinite(p).all()):
            return name
    return None


def rng_states() -> dict[str, Any]:
    """Global RNG states as plain containers and tensors (loadable with ``weights_only=True``)."""
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]
    version, inner, py_gauss = states["python"]
    states["python"] = [int(version), [int(k) for k in inner], py_gauss]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, inner, py_gauss = states["python"]
    random.setstate((version, tuple(inner), py_gauss))


class LastCheckpoint(Checkpoint):
    """Keep ``<dirpath>/<filename>.ckpt`` (default dir: ``<default_root_dir>/checkpoints``)
    equal to the newest resumable state; ``every_n_train_steps`` None/0: epoch ends only."""

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str = "last",
        every_n_train_steps: int | None = None,
        save_on_interrupt: bool = True,
    ) -> None:
        super().__init__()
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.dirpath = Path(dirpath) if dirpath else None
        self.filename = filename
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.save_on_interrupt = save_on_interrupt
        # (global step, "batch" | "epoch") of the newest file: an epoch-end save replaces a step
        # save at the same step (validation ran in between)
        self._last_saved: tuple[int, str] | None = None
        self._fitting = False
        self._overrides = command_line_overrides()

    @property
    def path(self) -> Path:
        assert self.dirpath is not None, "setup() has not run"
        return self.dirpath / f"{self.filename}.ckpt"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "checkpoints"
        # Run after the other checkpoint callbacks so their state in the file is current; a new
        # list (not mutation) keeps the hook loop that is calling us intact.
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        if callbacks and callbacks[-1] is not self:
            trainer.callbacks = [c for c in callbacks if c is not self] + [self]  # type: ignore[attr-defined]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        n = self.every_n_train_steps
        if self.save_on_interrupt and trainer.received_sigterm:
            self._save(trainer, pl_module, "SIGTERM received", "batch")
        elif n > 0 and trainer.global_step % n == 0:
            self._save(trainer, pl_module, "periodic", "batch")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before any checkpoint callback saves at validation end: a diverged model is not "best"
        if not trainer.sanity_checking:
            self._check_finite(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "epoch end", "epoch")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # e.g. max_steps reached mid-epoch; after a last epoch end there is nothing new to save
        self._save(trainer, pl_module, "training end", "epoch")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        stopped = isinstance(exception, SIGTERMException | KeyboardInterrupt)
        if not (self.save_on_interrupt and stopped):
            return
        what = "SIGTERM" if isinstance(exception, SIGTERMException) else "interrupt"
        if trainer.validating:
            # a file written now would resume with a partial validation
            log.warning("%s during validation: resume from %s", what, self.path)
            return
        if first_non_finite(pl_module) is not None:
            log.warning("%s: weights are not finite, keeping %s", what, self.path)
            return
        self._save(trainer, pl_module, what, "batch")

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": rng_states(), "overrides": list(self._overrides)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored right before the train dataloader draws its shuffling seed, so a resume
        # shuffles and augments like the uninterrupted run; testing leaves the RNG alone.
        if self._fitting and state_dict.get("rng_states"):
            try:
                set_rng_states(state_dict["rng_states"])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a malformed file
                log.warning("RNG states not restored (%s: %s)", type(e).__name__, e)

    def _check_finite(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bad = first_non_finite(pl_module)
        if bad is not None:
            raise NonFiniteWeightsError(
                f"non-finite weights ({bad}) after global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); lower the learning rate or enable gradient "
                f"clipping (trainer.gradient_clip_val)"
            )

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, why: str, kind: str) -> None:
        step = trainer.global_step
        fast_dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]
        if fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        last = self._last_saved
        if last is not None and last[0] == step and (kind == "batch" or last[1] == kind):
            return
        self._check_finite(trainer, pl_module)
        trainer.save_checkpoint(self.path, weights_only=False)  # full state, said explicitly
        self._last_saved = (step, kind)
        level = (
            logging.DEBUG if why in ("periodic", "epoch end", "training end") else logging.WARNING
        )
        log.log(level, "saved %s at global step %d (%s)", self.path, step, why)
