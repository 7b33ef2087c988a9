"""Lightning's ``RichProgressBar``, updated every N training batches instead of every batch.

Lightning's rich bar collects the progress-bar metrics (``trainer.progress_bar_metrics``, which
converts every logged tensor to a Python number) on every training batch, and its
``refresh_rate`` is the redraw rate *per second* of a background thread that competes with the
training threads for the GIL. On a small net (a ~5 ms step) both show in throughput; a bar
that moves every few dozen batches and redraws twice a second looks the same to a person.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar as _LightningRichProgressBar


class RichProgressBar(_LightningRichProgressBar):
    """``RichProgressBar`` whose training bar and metrics update every ``every_n_batches``.

    Args:
        refresh_rate: redraws per second of the bar's thread (Lightning's meaning); 0 disables.
        every_n_batches: update position and metrics every N training batches (and on the
            last batch of the epoch).
        **kwargs: passed to Lightning's ``RichProgressBar`` (``leave``, ``theme``, ...).
    """

    def __init__(self, refresh_rate: int = 2, every_n_batches: int = 25, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = int(every_n_batches)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        done = batch_idx + 1
        if done % self.every_n_batches == 0 or done == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
