"""A run's own per-epoch table (``epochs.jsonl``) and its data fingerprint in every checkpoint.

The curves of report.html come from here rather than from a logger's files, so they exist with
any logger (or none). A row is appended once an epoch's train and val metrics are final (at the
next epoch's start, and when training ends); a resumed run appends to the same file, and
readers keep the last row of each epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from imgcls.runs.fingerprint import CHECKPOINT_KEY

HISTORY_FILE = "epochs.jsonl"


class RunHistory(L.Callback):
    def __init__(self, out_dir: str | Path, fingerprint: dict[str, Any] | None = None) -> None:
        self.path = Path(out_dir) / HISTORY_FILE
        self.fingerprint = fingerprint
        self._last = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.fingerprint:  # plain strings and ints: readable with weights_only=True
            checkpoint[CHECKPOINT_KEY] = self.fingerprint

    def _row(self, trainer: L.Trainer) -> None:
        epoch = int(trainer.current_epoch)  # epochs completed so far
        if not trainer.is_global_zero or epoch <= self._last:
            return
        values = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/")) and isinstance(v, (int, float, torch.Tensor))
        }
        if not any(k.startswith("train/") for k in values):  # e.g. just resumed: nothing new
            return
        self._last = epoch
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": epoch, "step": int(trainer.global_step), **values}) + "\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._row(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._row(trainer)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``epochs.jsonl``, the last one of each epoch, by epoch."""
    rows: dict[int, dict[str, float]] = {}
    path = Path(run_dir) / HISTORY_FILE
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a crash
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows[row["epoch"]] = row
    return [rows[k] for k in sorted(rows)]


def watch_run(trainer: L.Trainer, dm: Any, out_dir: str | Path) -> dict[str, Any] | None:
    """The data fingerprint (rank zero, which writes checkpoints), and the history callback."""
    from imgcls.runs.fingerprint import data_fingerprint
    from imgcls.utils.ranks import is_rank_zero

    fingerprint = data_fingerprint(dm) if is_rank_zero() else None
    trainer.callbacks.append(RunHistory(out_dir, fingerprint))  # type: ignore[attr-defined]
    return fingerprint
