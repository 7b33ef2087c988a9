"""Lightning's ``RichProgressBar``, updated every N training batches instead of every batch,
redrawn at most ``refresh_rate`` times a second, narrow enough for 80 columns; Lightning's model
summary of the net's layers only.

Lightning's bar syncs ``progress_bar_metrics`` to numbers on every batch and redraws from a
thread competing for the GIL; on a ~5 ms step both cost throughput, and a bar moving every few
dozen batches, redrawn twice a second, looks the same to a person. Lightning always starts that
thread (no option turns it off), ``time.sleep``s it ``1/refresh_rate`` s between polls and joins
it at each stop (end of fit, of test): up to 0.5 s at 2 redraws a second. So Lightning is given
``refresh_rate=20`` (a stop waits at most 0.05 s), and the public ``refresh()`` it calls after
every change draws on the calling thread at most ``refresh_rate`` times a second: Lightning's
thread is never asked to draw."""

from __future__ import annotations

import shutil
from time import monotonic
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.callbacks import RichProgressBar as _LightningRichProgressBar
from rich.progress import TimeRemainingColumn

_TICKS_PER_SECOND = 20  # Lightning's redraw thread: it polls, ``refresh`` draws


class RichProgressBar(_LightningRichProgressBar):
    """``refresh_rate``: redraws per second at most (0: no bar); the bar and its metrics move
    every ``every_n_batches`` and on the epoch's last batch. ``metrics``: the ones the bar shows
    (null: all); with the speed column left out below 100 columns, a row fits 80 (Lightning's
    bar and every metric wrap into a column of their own there)."""

    def __init__(
        self,
        refresh_rate: float = 2,
        every_n_batches: int = 25,
        metrics: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(refresh_rate=_TICKS_PER_SECOND if refresh_rate > 0 else 0, **kwargs)
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.redraw_interval = 1 / refresh_rate if refresh_rate > 0 else 0.0
        self.every_n_batches = int(every_n_batches)
        self.shown = None if metrics is None else list(metrics)
        self._next_redraw = 0.0

    def refresh(self, hard: bool = False) -> None:
        """Lightning's hooks call this after every change: draw now, on this thread, when the
        last draw is ``1/refresh_rate`` s old (or ``hard``), else skip (the next call past that,
        or the stop, draws the newer state)."""
        now = monotonic()
        if hard or now >= self._next_redraw:
            self._next_redraw = now + self.redraw_interval
            super().refresh(hard=True)

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

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        if done == self.total_train_batches:
            self._next_redraw = 0.0  # the epoch's last position is always drawn
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
