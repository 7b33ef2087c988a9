"""Checkpoint writes: Lightning's default save vs the atomic (fsync + rename) save; step-save cost.

1. One full training checkpoint (weights + Adam moments) written by Lightning's
   ``TorchCheckpointIO`` and by ``AtomicCheckpointIO`` into the run's logs disk, interleaved, best
   of the repeats. The atomic writer fsyncs, so it measures what durability costs.
2. Training throughput of the default LeNet epoch without step checkpoints and with
   ``last.ckpt`` written every 50 steps (what a kill-safe run pays).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from benchmarks._common import EpochTimer, compose_cfg, rate
from imgcls.builder import build_datamodule, build_model, build_trainer
from imgcls.engine.checkpoints.atomic_io import AtomicCheckpointIO
from imgcls.utils.config import project_root


def fake_checkpoint(megabytes: float) -> dict:
    """A checkpoint-shaped dict of about ``megabytes`` (weights + two optimizer moments)."""
    n = max(1, int(megabytes * (1 << 20) / 4 / 3))
    w = torch.randn(n)
    return {
        "state_dict": {"w": w},
        "optimizer_states": [{"state": {0: {"exp_avg": w.clone(), "exp_avg_sq": w.clone()}}}],
        "global_step": 1,
    }


def save_times(ckpt: dict, out: Path, repeats: int) -> dict[str, float]:
    writers = {
        "Lightning TorchCheckpointIO": TorchCheckpointIO(),
        "AtomicCheckpointIO": AtomicCheckpointIO(),
    }
    best = {name: float("inf") for name in writers}
    for r in range(repeats):
        for name, io in writers.items():
            path = out / f"{name}_{r}.ckpt"
            t0 = time.perf_counter()
            io.save_checkpoint(ckpt, path)
            best[name] = min(best[name], time.perf_counter() - t0)
            path.unlink()
    return best


def epoch_rate(dm, every: int | None, out: Path) -> float:
    cfg = compose_cfg(
        [
            "trainer.max_epochs=1",
            "+trainer.limit_val_batches=0",
            "+trainer.num_sanity_val_steps=0",
            "callbacks.rich_progress_bar=null",
            "callbacks.model_summary=null",
            "+trainer.enable_progress_bar=false",
            f"callbacks.last_checkpoint.every_n_train_steps={every if every else 'null'}",
        ],
        out,
    )
    model = build_model(cfg, dm)
    trainer, _, _ = build_trainer(cfg)
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=dm)
    return rate(timer.images[0], timer.times[0])


def run(args) -> list[str]:
    repeats = 1 if args.quick else args.repeats
    logs = project_root() / "logs"
    logs.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_checkpointing_", dir=logs))
    lines = [f"checkpoint writes into {logs} (best of {repeats})", ""]
    lines += [
        "| checkpoint size | Lightning default | atomic + fsync | ratio |",
        "|---|---|---|---|",
    ]
    try:
        for mb in [0.5, 8] if args.quick else [0.5, 50, 500]:
            t = save_times(fake_checkpoint(mb), tmp, repeats)
            plain, atomic = t["Lightning TorchCheckpointIO"], t["AtomicCheckpointIO"]
            lines.append(
                f"| {mb:g} MB | {plain * 1e3:.1f} ms | {atomic * 1e3:.1f} ms | {atomic / plain:.2f} |"
            )
        lines.append("")

        cfg = compose_cfg([], tmp / "cfg")
        dm = build_datamodule(cfg)
        if args.quick:
            dm.splits["train"] = dm.splits["train"].subset(torch.arange(128 * 60))
        every = 50
        rates: dict[str, list[float]] = {
            "no step checkpoints": [],
            f"last.ckpt every {every} steps": [],
        }
        epoch_rate(
            dm, None, tmp / "warmup"
        )  # one-time costs (thread pools, allocator) off the clock
        for r in range(repeats):
            rates["no step checkpoints"].append(epoch_rate(dm, None, tmp / f"n{r}"))
            rates[f"last.ckpt every {every} steps"].append(epoch_rate(dm, every, tmp / f"s{r}"))
        base = max(rates["no step checkpoints"])
        lines += ["| LeNet epoch | best images/s | ratio |", "|---|---|---|"]
        for name, values in rates.items():
            lines.append(f"| {name} | {max(values):,.0f} | {max(values) / base:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lines
