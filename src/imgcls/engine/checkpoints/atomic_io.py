"""Crash-safe checkpoint writes and the disk checks a run makes before it starts.

Lightning's ``TorchCheckpointIO`` writes to ``tempfile.mkstemp()`` (often another filesystem) and
``shutil.move``s it over the target: a kill mid-copy truncates ``last.ckpt``, nothing is fsynced,
and a kill before the commit leaks the temp file. Here writes go through ``atomic_file``; a crash
leaves at most a ``.<name>.*.tmp`` file, which no ``*.ckpt`` glob matches and resume deletes."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from imgcls.errors import CheckpointError, ConfigError
from imgcls.utils.files import TMP_SUFFIX, atomic_file

log = logging.getLogger(__name__)
MB = 1 << 20


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path`` (``CheckpointError`` when it
    cannot write; the previous file stays intact)."""
    target = Path(path)
    try:
        with atomic_file(target, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        kept = f"; the previous {target.name} is intact" if target.exists() else ""
        raise CheckpointError(f"cannot write checkpoint {target}: {e}{kept}") from None


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files left by a process killed in the middle of a checkpoint write."""
    d = Path(directory)
    removed = []
    for p in d.glob(f".*.ckpt.*{TMP_SUFFIX}") if d.is_dir() else ():
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    if removed:
        log.info("removed %d partial checkpoint file(s) of a killed write in %s", len(removed), d)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local writes go through :func:`atomic_torch_save`; remote ones (``s3://``) stay Lightning's."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(checkpoint, path)


def use_atomic_checkpoint_io(trainer: L.Trainer) -> None:
    """Swap a plain ``TorchCheckpointIO`` for the atomic one; strategies with their own format
    (FSDP, DeepSpeed) or a user-chosen plugin (``AsyncCheckpointIO``) are left alone."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def check_writable(directory: str | Path) -> None:
    """Create ``directory`` and prove a file can be written and synced in it (fail at start,
    not at the first checkpoint)."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".write_test.")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"cannot write to {d} ({e.strerror or e}); the run would fail at its first checkpoint. "
            f"Choose a writable place with paths.log_dir=<dir> (or hydra.run.dir=<dir>)"
        ) from None


def checkpoint_size_estimate(model: torch.nn.Module, optimizer_slots: int = 2) -> int:
    """Bytes of a training checkpoint: weights plus Adam's two moments per trainable weight."""
    weights = sum(
        t.numel() * t.element_size() for t in model.state_dict().values() if hasattr(t, "numel")
    )
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + optimizer_slots * trainable + MB  # + loops, callbacks, hparams


def check_free_space(
    directories: Iterable[str | Path], checkpoint_bytes: int, margin_mb: float
) -> None:
    """Refuse to start without room for three checkpoints (best, last, the temp file of an
    atomic write) plus ``margin_mb`` for logs on each disk used."""
    need = 3 * checkpoint_bytes + int(margin_mb * MB)
    seen: set[int] = set()
    for directory in directories:
        d = Path(directory)
        while not d.exists() and d != d.parent:
            d = d.parent
        dev = d.stat().st_dev
        if dev in seen:
            continue
        seen.add(dev)
        free = shutil.disk_usage(d).free
        if free < need:
            raise ConfigError(
                f"not enough disk space for this run in {directory}: {free / MB:.0f} MB free, "
                f"about {need / MB:.0f} MB needed (3 checkpoints of {checkpoint_bytes / MB:.1f} MB "
                f"+ {margin_mb:g} MB for logs). Free some space, write elsewhere with "
                f"paths.log_dir=<dir>, or lower extras.min_free_space_mb"
            )
