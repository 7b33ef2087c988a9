"""MNIST LeNet: Lightning pipeline vs a plain PyTorch loop; time to 99 %; default run's RSS.

Both contenders train the same LeNet on the same preloaded uint8 tensors (normalized per
batch), batch 128, Adam(1e-3) + OneCycle(max_lr 0.01). The Lightning side is the project's
own default config (datamodule, ImageClassifier, default callbacks and TensorBoard logger).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from benchmarks._common import EpochTimer, compose_cfg, rate
from imgcls.builder import build_datamodule, build_model, build_trainer
from imgcls.data.transforms import normalize
from imgcls.utils.config import project_root


def plain_epoch(dm, cfg, steps_total: int) -> tuple[int, float, list[float]]:
    """One epoch of a hand-written loop; returns (images, seconds, step times)."""
    spec = dm.spec
    net = instantiate(
        cfg.model.net,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        image_size=list(spec.image_size),
    )
    # same memory format as the pipeline, so the ratio measures the framework, not NHWC
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps_total)
    crit = torch.nn.CrossEntropyLoss()
    data = dm.splits["train"]
    bs = dm.batch_size
    net.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(data))
    n = 0
    steps: list[float] = []
    last = time.perf_counter()
    for i in range(0, len(data), bs):
        now = time.perf_counter()
        steps.append(now - last)
        last = now
        idx = perm[i : i + bs]
        x = normalize(data.images[idx], spec.mean, spec.std).contiguous(memory_format=fmt)
        y = data.targets[idx]
        loss = crit(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        n += len(y)
    return n, time.perf_counter() - t0, steps[1:]


def lightning_epoch(dm, overrides: list[str], out: Path) -> tuple[int, float, list[float]]:
    cfg = compose_cfg(
        [
            "trainer.max_epochs=1",
            "+trainer.limit_val_batches=0",
            "+trainer.num_sanity_val_steps=0",
            *overrides,
        ],
        out,
    )
    model = build_model(cfg, dm)
    trainer, _, _ = build_trainer(cfg)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=dm)
    return timer.images[0], timer.times[0], timer.steps


class TestAccuracy(EpochTimer):
    """Times training epochs and, off the clock, measures test accuracy after each."""

    def __init__(self, dm) -> None:
        super().__init__()
        self.dm = dm
        self.acc: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        super().on_train_epoch_end(trainer, pl_module)
        test = self.dm.splits["test"]
        spec = self.dm.spec
        was = pl_module.training
        pl_module.eval()
        correct = 0
        with torch.inference_mode():
            for i in range(0, len(test), 1000):
                x = normalize(test.images[i : i + 1000], spec.mean, spec.std)
                correct += int((pl_module(x).argmax(1) == test.targets[i : i + 1000]).sum())
        pl_module.train(was)
        self.acc.append(correct / len(test))


def run(args) -> list[str]:
    lines: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    cfg = compose_cfg([], tmp / "cfg")
    dm = build_datamodule(cfg)
    steps = -(-len(dm.splits["train"]) // dm.batch_size)
    repeats = 1 if args.quick else args.repeats

    # 1. throughput, interleaved so that machine noise hits both sides alike. The median
    # step time is robust to the bursts of noise a shared VM has; whole epochs are not.
    contenders = {
        "plain PyTorch loop": lambda r: plain_epoch(dm, cfg, steps),
        "Lightning, default callbacks + TensorBoard": lambda r: lightning_epoch(
            dm, [], tmp / f"l{r}"
        ),
        "Lightning, no callbacks/logger/progress bar": lambda r: lightning_epoch(
            dm,
            ["callbacks=none", "logger=none", "+trainer.enable_progress_bar=false"],
            tmp / f"b{r}",
        ),
    }
    epochs: dict[str, list[float]] = {k: [] for k in contenders}
    step_times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(repeats):
        for name, fn in contenders.items():
            n, seconds, st = fn(r)
            epochs[name].append(rate(n, seconds))
            step_times[name] += st
    bs = dm.batch_size
    base_epoch = max(epochs["plain PyTorch loop"])
    base_step = bs / statistics.median(step_times["plain PyTorch loop"])
    lines += [
        f"LeNet, batch {bs}, {len(dm.splits['train']):,} images/epoch, {repeats} interleaved epochs each",
        "",
        "| contender | best epoch images/s | median-step images/s | ratio (best epoch) | ratio (median step) |",
        "|---|---|---|---|---|",
    ]
    for name in contenders:
        ep, stp = max(epochs[name]), bs / statistics.median(step_times[name])
        lines.append(
            f"| {name} | {ep:,.0f} | {stp:,.0f} | {ep / base_epoch:.2f} | {stp / base_step:.2f} |"
        )
    lines.append("")

    # 2. time to 99.0 % test accuracy with the default recipe
    if not args.quick:
        cfg2 = compose_cfg(["+trainer.num_sanity_val_steps=0"], tmp / "t99")
        torch.manual_seed(int(cfg2.seed))
        model = build_model(cfg2, dm)
        trainer, _, _ = build_trainer(cfg2)
        probe = TestAccuracy(dm)
        trainer.callbacks.append(probe)
        trainer.fit(model, datamodule=dm)
        elapsed, reached = 0.0, None
        for epoch, (t, acc) in enumerate(zip(probe.times, probe.acc, strict=True)):
            elapsed += t
            lines.append(
                f"- epoch {epoch + 1}: test acc {acc:.4f} after {elapsed:.1f} s of training"
            )
            if reached is None and acc >= 0.99:
                reached = elapsed
        lines.append(
            f"- time to 99.0 % test accuracy: {reached:.1f} s"
            if reached
            else "- 99.0 % not reached"
        )
        lines.append("")

    # 3. the default run end to end, as `make train` runs it: wall time, peak RSS, test/acc
    if not args.quick:
        log_dir = tmp / "logs"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(project_root() / "src" / "train.py"),
                f"paths.log_dir={log_dir}/",
                "extras.print_config=false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # wait4 reports this child's own peak RSS (RUSAGE_CHILDREN would be the max over every
        # child this benchmark process ever had, e.g. DataLoader workers of other sections)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("the default training run failed")
        rss_mb = usage.ru_maxrss / 1024
        summary = json.loads(next(log_dir.glob("train/runs/*/metrics.json")).read_text())
        lines.append(
            f"- `python src/train.py` (default): wall {wall:.1f} s, peak RSS {rss_mb:,.0f} MB, "
            f"test/acc {summary['metrics']['test/acc']:.4f}"
        )
    return lines
