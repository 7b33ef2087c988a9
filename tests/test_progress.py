"""The default progress bar moves every N training batches (and on the last), not every batch,
redraws at most refresh_rate times a second, and stops without waiting for a redraw."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from imgcls.callbacks import progress
from imgcls.callbacks.progress import RichProgressBar


def test_bar_updates_every_n_batches_and_on_the_last(monkeypatch) -> None:
    updated: list[int] = []
    monkeypatch.setattr(
        LightningRichProgressBar,
        "on_train_batch_end",
        lambda self, trainer, module, outputs, batch, batch_idx: updated.append(batch_idx),
    )
    bar = RichProgressBar(every_n_batches=3)
    bar._trainer = SimpleNamespace(num_training_batches=7, max_epochs=3)  # type: ignore[assignment]
    for i in range(7):
        bar.on_train_batch_end(bar._trainer, None, None, None, i)  # type: ignore[arg-type]
    assert updated == [2, 5, 6]


def test_every_n_batches_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_n_batches must be >= 1"):
        RichProgressBar(every_n_batches=0)


def test_redraws_at_most_refresh_rate_times_a_second(monkeypatch) -> None:
    """Lightning's hooks ask for a redraw after every change; the bar draws on the asking
    thread, once per 1/refresh_rate s, and always the epoch's last training batch."""
    drawn: list[bool] = []
    monkeypatch.setattr(
        LightningRichProgressBar, "refresh", lambda self, hard=False: drawn.append(hard)
    )
    clock = [100.0]
    monkeypatch.setattr(progress, "monotonic", lambda: clock[0])
    bar = RichProgressBar(refresh_rate=2)
    assert bar.refresh_rate > 2  # Lightning's thread ticks fast: its sleep bounds each stop
    for _ in range(5):
        bar.refresh()
    assert drawn == [True]
    clock[0] += 0.49
    bar.refresh()
    assert drawn == [True]
    clock[0] += 0.02
    bar.refresh()
    bar.refresh(hard=True)
    assert drawn == [True, True, True]
    monkeypatch.setattr(LightningRichProgressBar, "on_train_batch_end", lambda *a: bar.refresh())
    bar._trainer = SimpleNamespace(num_training_batches=4, max_epochs=1)  # type: ignore[assignment]
    bar.on_train_batch_end(bar._trainer, None, None, None, 3)  # type: ignore[arg-type]
    assert len(drawn) == 4
    assert not RichProgressBar(refresh_rate=0).is_enabled


def test_stopping_the_bar_does_not_wait_for_the_next_redraw() -> None:
    """Lightning's redraw thread sleeps 1/refresh_rate s, and each stop (end of fit, of test)
    joins it; at 1 redraw a second a stop took up to 1 s. Ours ticks fast: well under 1 s, and
    no thread outlives the fit."""
    bar = RichProgressBar(refresh_rate=1)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    before = set(threading.enumerate())
    trainer.fit(BoringModel())  # a full start/stop cycle through Lightning's hooks
    assert not [t for t in threading.enumerate() if t not in before]
    bar._init_progress(trainer)
    thread = bar.progress.live._refresh_thread
    assert thread is not None and thread.is_alive()  # Lightning's, started by the bar
    time.sleep(0.05)  # the thread is inside its sleep
    t0 = time.perf_counter()
    bar._stop_progress()
    assert time.perf_counter() - t0 < 0.2
    assert not thread.is_alive()
