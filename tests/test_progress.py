"""The default progress bar moves every N training batches (and on the last), not every batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar

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
