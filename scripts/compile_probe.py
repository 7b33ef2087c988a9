#!/usr/bin/env python
"""Step time of LeNet / SimpleCNN / ResNet-18 on CPU: eager vs torch.compile vs bf16 autocast.

python scripts/compile_probe.py lenet,simple_cnn,resnet18 eager,bf16,compile 20
"""

import statistics
import sys
import time

import torch
import torchvision

from imgcls.models.nets.lenet import LeNet
from imgcls.models.nets.simple_cnn import SimpleCNN

torch.manual_seed(0)


def make(name):
    if name == "lenet":
        return LeNet(1, 10, (28, 28)), (1, 28, 28)
    if name == "simple_cnn":
        return SimpleCNN(1, 10, (28, 28), channels=[4, 4]), (1, 28, 28)
    return torchvision.models.resnet18(num_classes=10), (3, 64, 64)


def bench(net, shape, bs, mode, steps):
    net = net.to(memory_format=torch.channels_last)
    f = torch.compile(net) if mode == "compile" else net
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    crit = torch.nn.CrossEntropyLoss()
    x = torch.randn(bs, *shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = crit(f(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = time.perf_counter()
    step()
    step()
    warm = time.perf_counter() - t
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return bs / statistics.median(ts), warm


for name in sys.argv[1].split(","):
    bss = (128, 256) if name != "resnet18" else (32, 64)
    for bs in bss:
        res = {}
        for mode in sys.argv[2].split(","):
            net, shape = make(name)
            r, w = bench(net, shape, bs, mode, int(sys.argv[3]))
            res[mode] = r
            print(
                f"{name} bs {bs} {mode}: {r:,.0f} img/s (median step; first 2 steps {w:.1f}s) ratio vs eager {r / res['eager']:.2f}",
                flush=True,
            )
