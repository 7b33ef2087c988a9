"""The default progress bar moves every N training batches (and on the last), not every batch."""

from __future__ import annotations

import time
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

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


def test_stopping_the_bar_does_not_wait_for_the_next_redraw() -> None:
    """Lightning's redraw thread sleeps 1/refresh_rate s, so each stop (end of fit, of test)
    waited up to that long; ours wakes on stop. 1 redraw a second: a stop well under 1 s."""
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
    trainer.fit(BoringModel())  # a full start/stop cycle through Lightning's hooks
    bar._init_progress(trainer)
    thread = bar.progress.live._refresh_thread
    assert type(thread).__name__ == "_StoppableRefreshThread"  # the only redraw thread
    time.sleep(0.05)  # the thread is inside its wait
    t0 = time.perf_counter()
    bar._stop_progress()
    assert time.perf_counter() - t0 < 0.5
    assert not thread.is_alive()
