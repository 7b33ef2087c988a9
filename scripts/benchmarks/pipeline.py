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
from imgcls.utils.cuda_probe import skip_failing_nvml_probe


def test_accuracy(net, dm) -> float:
    """Accuracy of ``net`` on the official test split (eval mode, batches of 1000)."""
    test, spec = dm.splits["test"], dm.spec
    was = net.training
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test), 1000):
            x = normalize(test.images[i : i + 1000], spec.mean, spec.std)
            correct += int((net(x).argmax(1) == test.targets[i : i + 1000]).sum())
    net.train(was)
    return correct / len(test)


def plain_train(
    dm, cfg, epochs: int = 1, batch_size: int | None = None, max_lr: float = 0.01, eval_fn=None
) -> tuple[int, list[float], list[float], list[float]]:
    """A hand-written loop: Adam(1e-3) + OneCycle(max_lr) over ``epochs`` epochs.

    Returns (images per epoch, epoch seconds, step seconds, test accuracy after each epoch when
    ``eval_fn`` is given; measured off the clock).
    """
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
    data = dm.splits["train"]
    bs = batch_size or dm.batch_size
    steps_total = epochs * -(-len(data) // bs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps_total)
    crit = torch.nn.CrossEntropyLoss()
    net.train()
    times: list[float] = []
    steps: list[float] = []
    accs: list[float] = []
    n = 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(data))
        n = 0
        last = None
        for i in range(0, len(data), bs):
            now = time.perf_counter()
            if last is not None:
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
        times.append(time.perf_counter() - t0)
        if eval_fn is not None:
            accs.append(eval_fn(net))
    return n, times, steps, accs


def plain_epoch(dm, cfg) -> tuple[int, float, list[float]]:
    """One epoch of the hand-written loop at the template's batch size (throughput)."""
    n, times, steps, _ = plain_train(dm, cfg)
    return n, times[0], steps


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
    """Wall clock of the fit from its first training step, with test accuracy per epoch.

    An epoch's time is stamped when the next epoch starts (or training ends), so its
    validation and checkpoint saves are on the clock; the test evaluation done here is not.
    """

    def __init__(self, dm) -> None:
        super().__init__()
        self.dm = dm
        self.acc: list[float] = []
        self.elapsed: list[float] = []
        self._start: float | None = None
        self._off = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if self._start is None:
            self._start = time.perf_counter()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def _stamp(self, pl_module) -> None:  # type: ignore[no-untyped-def]
        if self._start is None or len(self.elapsed) == len(self.times):
            return
        t0 = time.perf_counter()
        self.elapsed.append(t0 - self._start - self._off)
        self.acc.append(test_accuracy(pl_module, self.dm))
        self._off += time.perf_counter() - t0

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self._stamp(pl_module)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self._stamp(pl_module)


def first_reaching(elapsed: list[float], accs: list[float], floor: float = 0.99) -> float | None:
    return next((t for t, a in zip(elapsed, accs, strict=True) if a >= floor), None)


def default_run(log_dir: Path) -> dict[str, float]:
    """``python src/train.py`` as a user runs it: wall, start-up to first step, peak RSS."""
    stamp = log_dir / "first_step.txt"
    env = dict(os.environ)
    scripts = str(project_root() / "scripts")
    env["PYTHONPATH"] = os.pathsep.join([scripts, *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(project_root() / "src" / "train.py"),
            f"paths.log_dir={log_dir}/",
            "+callbacks.first_step._target_=benchmarks._common.FirstStepStamp",
            f"+callbacks.first_step.path={stamp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    # wait4 reports this child's own peak RSS (RUSAGE_CHILDREN would be the max over every
    # child this benchmark process ever had, e.g. DataLoader workers of other sections)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("the default training run failed")
    summary = json.loads(next(log_dir.glob("train/runs/*/metrics.json")).read_text())
    return {
        "wall": wall,
        "startup": float(stamp.read_text()) - t0,
        "rss_mb": usage.ru_maxrss / 1024,
        "test_acc": summary["metrics"]["test/acc"],
    }


def import_floor(stack: str = "torch, torchvision, lightning.pytorch", repeats: int = 2) -> float:
    """Seconds a fresh interpreter takes to ``import <stack>`` and build an optimizer (which
    imports ``torch._dynamo``): what any script on that stack pays before its first step, the
    floor under the template's start-up (``stack="torch"``: a plain PyTorch script's). Best
    of ``repeats``."""
    code = f"import {stack}; torch.optim.Adam(torch.nn.Linear(1, 1).parameters())"
    best = float("inf")
    for _ in range(repeats):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.time() - t0)
    return best


# the plain loop the template replaces (issue 13): fixed, whatever the template's defaults are
PLAIN_RECIPE = {"epochs": 3, "batch_size": 128, "max_lr": 0.01}


def run(args) -> list[str]:
    lines: list[str] = []
    # `import lightning` (this process has it) makes every optimizer step probe NVML; a plain
    # script does not import Lightning and the template turns the failing probe off: neither pays
    skip_failing_nvml_probe()
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    cfg = compose_cfg([], tmp / "cfg")
    dm = build_datamodule(cfg)
    repeats = 1 if args.quick else args.repeats

    # 1. throughput, interleaved so that machine noise hits both sides alike. The median
    # step time is robust to the bursts of noise a shared VM has; whole epochs are not.
    contenders = {
        "plain PyTorch loop": lambda r: plain_epoch(dm, cfg),
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
        f"LeNet, batch {bs} (the default config's), {len(dm.splits['train']):,} images/epoch, "
        f"{repeats} interleaved epochs each",
        "",
        "| contender | best epoch images/s | median-step images/s | ratio (best epoch) "
        "| ratio (median step) | paired epoch ratios |",
        "|---|---|---|---|---|---|",
    ]
    plain_eps = epochs["plain PyTorch loop"]
    for name in contenders:
        ep, stp = max(epochs[name]), bs / statistics.median(step_times[name])
        # each repeat's epoch over the plain epoch run just before it (the same minute of noise)
        paired = " ".join(f"{a / b:.2f}" for a, b in zip(epochs[name], plain_eps, strict=True))
        lines.append(
            f"| {name} | {ep:,.0f} | {stp:,.0f} | {ep / base_epoch:.2f} | {stp / base_step:.2f} "
            f"| {paired} |"
        )
    lines.append("")
    if args.quick:
        return lines

    # 2. time to 99.0 % test accuracy: the plain OneCycle loop vs the default recipe (the
    # template's clock runs from its first training step, validation and checkpoints included)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    _, ptimes, _, paccs = plain_train(
        dm, cfg, eval_fn=lambda net: test_accuracy(net, dm), **PLAIN_RECIPE
    )
    plain_elapsed = [sum(ptimes[: i + 1]) for i in range(len(ptimes))]
    cfg2 = compose_cfg([], tmp / "t99")
    torch.manual_seed(seed)
    model = build_model(cfg2, dm)
    trainer, _, _ = build_trainer(cfg2)
    probe = TestAccuracy(dm)
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=dm)
    t = cfg2.trainer
    recipe = (
        f"batch {cfg2.data.batch_size}, {t.max_epochs} epochs, max_lr {cfg2.model.scheduler.max_lr or cfg2.model.optimizer.lr}, "
        f"validation every {t.check_val_every_n_epoch} epoch(s)"
    )
    r = PLAIN_RECIPE
    lines += [
        f"| contender (seed {seed}) | test acc after each epoch | training s at each epoch end |",
        "|---|---|---|",
        f"| plain loop (batch {r['batch_size']}, {r['epochs']} epochs, max_lr {r['max_lr']}) | "
        + " ".join(f"{a:.4f}" for a in paccs)
        + " | "
        + " ".join(f"{x:.1f}" for x in plain_elapsed)
        + " |",
        f"| template default ({recipe}) | "
        + " ".join(f"{a:.4f}" for a in probe.acc)
        + " | "
        + " ".join(f"{x:.1f}" for x in probe.elapsed)
        + " |",
        "",
    ]
    plain99 = first_reaching(plain_elapsed, paccs)
    tmpl99 = first_reaching(probe.elapsed, probe.acc)
    fmt = lambda v: f"{v:.1f} s" if v is not None else "not reached"  # noqa: E731
    lines.append(
        f"- time to 99.0 % test accuracy: plain loop {fmt(plain99)}, template {fmt(tmpl99)}"
    )
    if plain99 and tmpl99:
        lines.append(f"- ratio template / plain: {tmpl99 / plain99:.2f} (goal <= 1.0)")

    # 3. the default run end to end, as `make train` runs it
    d = default_run(tmp / "logs")
    floor, torch_floor = import_floor(), import_floor("torch")
    plain_train_s = plain_elapsed[-1]
    lines += [
        f"- `python src/train.py` (default): wall {d['wall']:.1f} s = {d['wall'] / plain_train_s:.2f}x "
        f"the plain loop's {plain_train_s:.1f} s of training (goal <= 1.5x); test/acc {d['test_acc']:.4f}",
        f"- start-up to the first training step: {d['startup']:.1f} s (goal <= 3 s)",
        f"- of which the import floor (`import torch, torchvision, lightning.pytorch` + an "
        f"optimizer, fresh interpreter): {floor:.1f} s; the template's own start-up "
        f"{d['startup'] - floor:.1f} s; wall less the floor {d['wall'] - floor:.1f} s = "
        f"{(d['wall'] - floor) / plain_train_s:.2f}x the plain loop",
        f"- a plain PyTorch script's own floor (`import torch` + an optimizer): {torch_floor:.1f} s",
        f"- peak RSS of the default run: {d['rss_mb']:,.0f} MiB (goal <= 1024 MiB)",
    ]
    return lines
