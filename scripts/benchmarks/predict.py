"""predict.py throughput: the task (Trainer.predict, per-batch decoding, CSV output) vs a bare loop.

Both decode the same PNG files with ``imgcls.data.images.load_image``, normalize, and run the
same LeNet checkpoint under ``torch.inference_mode`` in batches of 256; the bare loop keeps
only the argmax. The ratio is the cost of the framework around the work (goal: close to 1).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import compose_cfg
from imgcls.builder import build_datamodule, build_model
from imgcls.data.images import load_image
from imgcls.data.transforms import normalize
from imgcls.tasks.predict import predict


def write_pngs(dm, folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    images = dm.splits["test"].images[:n, 0].numpy()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def bare_loop(ckpt: Path, folder: Path, batch: int) -> tuple[int, float]:
    from imgcls.models.load import load_classifier

    t0 = time.perf_counter()
    model = load_classifier(ckpt)
    spec = model.spec
    files = sorted(folder.glob("*.png"))
    preds = []
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            x = torch.stack(
                [load_image(f, spec.in_channels, spec.image_size) for f in files[i : i + batch]]
            )
            preds.append(model(normalize(x, spec.mean, spec.std)).argmax(1))
    return len(torch.cat(preds)), time.perf_counter() - t0


def run(args) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    n = 1000 if args.quick else 10000
    cfg = compose_cfg([], tmp / "train")
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)  # untrained weights cost the same to run
    ckpt = tmp / "lenet.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    folder = tmp / "pngs"
    write_pngs(dm, folder, n)

    repeats = 1 if args.quick else args.repeats
    task, bare = [], []
    for r in range(repeats):
        out = tmp / f"predict{r}"
        pcfg = compose_cfg(
            [f"ckpt_path={ckpt}", f"input={folder}", "batch_size=256"], out, "predict"
        )
        t0 = time.perf_counter()
        predict(pcfg)
        task.append(time.perf_counter() - t0)
        images, seconds = bare_loop(ckpt, folder, 256)
        bare.append(seconds)
    best_task, best_bare = min(task), min(bare)
    return [
        f"LeNet checkpoint, {n:,} MNIST PNG files (28x28), batch 256, CPU, best of {repeats}",
        "",
        "| contender | wall time (s) | images/s |",
        "|---|---|---|",
        f"| bare loop (decode, normalize, forward) | {best_bare:.2f} | {n / best_bare:,.0f} |",
        f"| predict task (Trainer.predict, top-k, predictions.csv) | {best_task:.2f} | {n / best_task:,.0f} |",
        "",
        f"- ratio (task / bare throughput): {best_bare / best_task:.2f}",
    ]
