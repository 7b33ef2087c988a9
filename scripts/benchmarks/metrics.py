"""What ImageClassifier's one torchmetrics path costs a training step (issue 27).

Interleaved, best of the repeats, per step on batch-256 LeNet logits (10 classes):
- ``StageMetrics.update`` (accuracy + mean loss, ``validate_args=False``): what runs now;
- the same metrics with torchmetrics' input validation on (its default);
- one fused add into a plain tensor: the hand-rolled ``RunningSum`` path it replaced;
- a whole LeNet training step (forward, backward, Adam) for scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from imgcls.models.metrics import StageMetrics
from imgcls.models.nets.lenet import LeNet


def _best_us(fn: Callable[[], Any], steps: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e6


def run(args: Any) -> list[str]:
    torch.manual_seed(0)
    steps = 50 if args.quick else 400
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    net = LeNet(1, 10, [28, 28])
    opt = torch.optim.Adam(net.parameters())
    logits = net(x).detach()
    loss = nn.functional.cross_entropy(logits, y)

    ours = StageMetrics(10, "train")
    checked = MetricCollection({"acc": MulticlassAccuracy(10, average="micro")})
    checked_loss = MeanMetric()
    sums = torch.zeros(2, dtype=torch.float64)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    def torchmetrics_checked() -> None:
        checked.update(logits, y)
        checked_loss.update(loss, weight=len(y))

    def running_sum() -> None:
        sums.add_(torch.stack(((logits.argmax(1) == y).sum(), loss * len(y))))

    contenders = {
        "StageMetrics.update (validate_args=False, now)": lambda: ours.update(
            logits, y, loss, None
        ),
        "torchmetrics with input validation": torchmetrics_checked,
        "plain running sums (the removed RunningSum path)": running_sum,
        "LeNet training step (forward + backward + Adam)": step,
    }
    times = {name: float("inf") for name in contenders}
    for _ in range(args.repeats):  # interleaved: each round times every contender once
        for name, fn in contenders.items():
            times[name] = min(times[name], _best_us(fn, steps, 1))
    step_us = times["LeNet training step (forward + backward + Adam)"]
    lines = [
        f"per-step cost, batch 256 x 10 classes, best of {args.repeats} x {steps} steps",
        "",
        "| contender | µs per step | share of a LeNet step |",
        "|---|---|---|",
    ]
    for name, us in times.items():
        lines.append(f"| {name} | {us:,.0f} | {us / step_us:.1%} |")
    return lines
