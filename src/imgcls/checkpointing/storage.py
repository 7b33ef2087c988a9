"""Fail at start, not after an epoch, when a run could not write its checkpoints and logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from imgcls.errors import ConfigError

MB = 1 << 20


def check_writable(directory: str | Path) -> None:
    """Create ``directory`` if needed and prove a file can be written and synced in it.

    Raises:
        ConfigError: naming the directory and the OS reason.
    """
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
    """Bytes of a full training checkpoint: weights plus ``optimizer_slots`` copies of the
    trainable ones (Adam keeps two moments per parameter)."""
    weights = sum(
        t.numel() * t.element_size() for t in model.state_dict().values() if hasattr(t, "numel")
    )
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + optimizer_slots * trainable + MB  # + loops, callbacks, hparams


def check_free_space(
    directories: Iterable[str | Path], checkpoint_bytes: int, margin_mb: float
) -> None:
    """Refuse to start when a directory's disk cannot hold the run's checkpoints.

    The run needs room for three checkpoint files at once (best, last and the temporary file of
    an atomic write) plus ``margin_mb`` for logs.

    Raises:
        ConfigError: naming the directory, the free and the needed space.
    """
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
