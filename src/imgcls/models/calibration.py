"""Temperature scaling (Guo et al., 2017): one scalar ``T`` fitted on the validation logits of
the best checkpoint so that ``softmax(logits / T)`` is calibrated; accuracy is unchanged.

``model.calibrate=true``: after ``fit``, ``calibrate_checkpoint`` scores the best checkpoint on
the validation split, fits ``log T`` by LBFGS on the cross-entropy and writes ``T`` into the
checkpoint's ``temperature`` buffer, which ``ImageClassifier.forward`` divides by in eval, test,
predict and export."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """The ``T`` minimizing the cross-entropy of ``logits / T`` (LBFGS on ``log T``)."""
    logits, targets = logits.detach().double(), targets.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


class _Logits(L.Callback):
    """Keeps the logits ``validation_step`` returns, with their targets."""

    def __init__(self) -> None:
        self.logits: list[Tensor] = []
        self.targets: list[Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args: Any) -> None:
        self.logits.append(outputs.detach().float())
        self.targets.append(batch[1].detach())


def _gather(trainer: L.Trainer, x: Tensor) -> Tensor:
    """Every rank's rows (ranks may hold different numbers of them)."""
    if trainer.world_size <= 1:
        return x
    sizes = trainer.strategy.all_gather(torch.tensor([len(x)], device=x.device)).flatten()
    pad = x.new_zeros((int(sizes.max()) - len(x), *x.shape[1:]))
    rows = trainer.strategy.all_gather(torch.cat([x, pad]))
    return torch.cat([rows[r, : int(n)] for r, n in enumerate(sizes.tolist())])


def calibrate_checkpoint(
    trainer: L.Trainer, model: L.LightningModule, datamodule: Any, ckpt_path: str
) -> float:
    """Fit ``T`` on the validation split for ``ckpt_path`` and store it in that file."""
    from imgcls.engine.checkpoints.atomic_io import atomic_torch_save
    from imgcls.engine.checkpoints.load import load_checkpoint_dict

    collector = _Logits()
    trainer.callbacks.append(collector)  # type: ignore[attr-defined]
    try:
        trainer.validate(
            model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=False
        )
    finally:
        trainer.callbacks.remove(collector)  # type: ignore[attr-defined]
    # the loaded checkpoint may hold an earlier temperature: fit on the raw logits
    temperature = model.get_buffer("temperature")
    raw = torch.cat(collector.logits) * temperature.to(collector.logits[0].device)
    logits, targets = (
        _gather(trainer, raw).cpu(),
        _gather(trainer, torch.cat(collector.targets)).cpu(),
    )
    t = fit_temperature(logits, targets)
    before, after = F.cross_entropy(logits, targets), F.cross_entropy(logits / t, targets)
    msg = "temperature scaling: T = %.4f on %d validation images (val NLL %.4f -> %.4f)"
    log.info(msg, t, len(targets), before, after)
    if trainer.is_global_zero:
        ckpt = load_checkpoint_dict(ckpt_path)
        ckpt["state_dict"]["temperature"] = torch.tensor(t, dtype=torch.float32)
        atomic_torch_save(ckpt, ckpt_path)
    trainer.strategy.barrier("calibrated")
    with torch.no_grad():
        temperature.fill_(t)
    return t
