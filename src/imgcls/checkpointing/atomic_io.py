"""Crash-safe checkpoint writes: temp file in the target dir, fsync, atomic rename.

Lightning's ``TorchCheckpointIO`` saves through ``fsspec``'s transaction: it writes the bytes to
``tempfile.mkstemp()`` (the system temp dir, usually another filesystem) and then
``shutil.move``s them over the target. Across filesystems that move is a copy into the final
path, so a kill during the copy leaves a truncated ``last.ckpt``; nothing is fsynced, so a power
loss can leave an empty one; and a kill before the commit leaks the temp file in ``/tmp``.

Here the temp file lives beside the target (same filesystem), is fsynced, then ``os.replace``d
over it (atomic on POSIX and Windows) and the directory entry is fsynced. A reader sees either
the old complete file or the new complete file; a crash leaves at most a ``.<name>.*.tmp`` file,
which no checkpoint glob (``*.ckpt``) matches and the next resume deletes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from imgcls.errors import CheckpointError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Persist the rename itself (POSIX); not possible/needed on Windows."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``.

    Raises:
        CheckpointError: the file cannot be written (disk full, read-only, ...); the previous
            file at ``path``, if any, is left intact.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX
        )
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {target}: {e}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give checkpoints the permissions of any other file the user writes
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            kept = f"; the previous {target.name} is intact" if target.exists() else ""
            raise CheckpointError(f"cannot write checkpoint {target}: {e}{kept}") from None
        raise


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files left by a process killed in the middle of a checkpoint write."""
    d = Path(directory)
    removed = []
    if d.is_dir():
        for p in d.glob(f".*.ckpt.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    if removed:
        log.info(
            "removed %d partial checkpoint file(s) left by an interrupted write in %s",
            len(removed),
            d,
        )
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes go through :func:`atomic_torch_save`.

    Remote paths (``s3://`` ...) keep Lightning's own transaction-based upload.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(checkpoint, path)


def use_atomic_checkpoint_io(trainer: L.Trainer) -> None:
    """Swap the trainer's plain ``TorchCheckpointIO`` for the atomic one.

    Strategies with their own checkpoint format (FSDP, DeepSpeed) or a user-chosen plugin
    (e.g. ``AsyncCheckpointIO``) are left alone.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
