"""Lightning's ``RichProgressBar``, updated every N training batches instead of every batch,
narrow enough for 80 columns; Lightning's model summary of the net's layers only.

Lightning's bar syncs ``progress_bar_metrics`` to numbers on every batch and redraws from a
thread competing for the GIL; on a ~5 ms step both cost throughput, and a bar moving every few
dozen batches, redrawn twice a second, looks the same to a person. Lightning's redraw thread
sleeps between redraws, so stopping the bar (end of fit, of test) waited up to one redraw
interval (0.45 s of a default run's fit); ours waits on its stop event instead."""

from __future__ import annotations

import shutil
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.callbacks import RichProgressBar as _LightningRichProgressBar
from lightning.pytorch.callbacks.progress import rich_progress
from rich.progress import TimeRemainingColumn


class _StoppableRefreshThread(rich_progress._RefreshThread):
    """Lightning's redraw thread (redraws only when asked), woken at once by ``stop()``."""

    def run(self) -> None:
        while not self.done.wait(1 / self.refresh_per_second):
            if self.refresh_cond:
                with self.live._lock:
                    self.live.refresh()
                self.refresh_cond = False


class RichProgressBar(_LightningRichProgressBar):
    """``refresh_rate``: redraws per second (Lightning's meaning); the bar and its metrics move
    every ``every_n_batches`` and on the epoch's last batch. ``metrics``: the ones the bar shows
    (null: all); with the speed column left out below 100 columns, a row fits 80 (Lightning's
    bar and every metric wrap into a column of their own there)."""

    def __init__(
        self,
        refresh_rate: int = 2,
        every_n_batches: int = 25,
        metrics: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = int(every_n_batches)
        self.shown = None if metrics is None else list(metrics)

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        columns[1].bar_width = 10  # Lightning's bar is 40 wide
        if shutil.get_terminal_size().columns >= 100:
            return columns
        # below 100 columns: no it/s; the time left while running, the time taken when done
        time = TimeRemainingColumn(elapsed_when_finished=True)
        return [*columns[:3], time]

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        return items if self.shown is None else {k: items[k] for k in self.shown if k in items}

    def _init_progress(self, trainer: L.Trainer) -> None:
        # Lightning's CustomProgress.start builds the module's _RefreshThread: ours, for this call
        lightning_thread = rich_progress._RefreshThread
        rich_progress._RefreshThread = _StoppableRefreshThread  # type: ignore[misc]
        try:
            super()._init_progress(trainer)
        finally:
            rich_progress._RefreshThread = lightning_thread  # type: ignore[misc]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        if done % self.every_n_batches == 0 or done == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class NetSummary(RichModelSummary):
    """Lightning's summary with the net's layers that hold parameters: the metric objects, the
    loss and parameter-free layers (activations, pooling) are rows nobody reads."""

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        summary = super()._summary(trainer, pl_module)
        layers = summary._layer_summary
        for name in list(layers):
            if name.split(".")[0] != "net" or layers[name].num_parameters == 0:
                del layers[name]
        return summary
