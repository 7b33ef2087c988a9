"""The stream path: images/s against a plain ImageFolder loop, and peak memory vs dataset size.

On JPEG class folders generated from MNIST (RGB, 256x256 at native size, random tints):

- throughput: one training epoch of ``data.loading=stream`` batches (per-sample decode in 2
  worker processes, ``RandomResizedCrop`` to the model size at native resolution, uint8
  collation) against ``torchvision.datasets.ImageFolder`` + a plain ``DataLoader`` with the
  same files, workers, batch size and transform (steady-state epochs, best of repeats,
  interleaved);
- memory: peak PSS (proportional set size: shared pages counted once) of the whole process
  tree of ``src/train.py`` (main process + loader workers) for two dataset sizes whose decoded
  size is >= 5x ``data.memory_budget_mb``: stream (``data.loading=auto`` chooses it) against
  memory (decoding everything up front).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.utils.config import project_root

NATIVE = 256
MODEL = 128
BATCH = 64
WORKERS = 2
BUDGET_MB = 16


def make_jpeg_folders(root: Path, n_train: int, n_val: int) -> Path:
    """``root/train/<digit>/*.jpg`` and ``root/valid/...``: MNIST digits as 256x256 RGB JPEGs."""
    from torchvision.datasets import MNIST

    mnist = MNIST(str(project_root() / "data"), train=True, download=False)
    rng = random.Random(0)
    jobs = []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "valid"
        tint = tuple(rng.randint(120, 255) for _ in range(3))
        jobs.append((i, split, tint))

    def one(job) -> None:
        i, split, tint = job
        img, label = mnist[i]
        rgb = Image.merge("RGB", [img.point(lambda v, t=t: v * t // 255) for t in tint])
        out = root / split / str(label) / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        rgb.resize((NATIVE, NATIVE), Image.Resampling.BILINEAR).save(out, quality=90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, jobs))
    return root


def _epoch(loader) -> int:
    n = 0
    for batch in loader:
        n += len(batch[1])
    return n


def throughput(root: Path, repeats: int) -> list[str]:
    dm = FolderDataModule(
        root=str(root),
        image_size=[MODEL, MODEL],
        channels=3,
        loading="stream",
        num_workers=WORKERS,
        batch_size=BATCH,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        stream={"train_crop": "random_resized_crop"},
    )
    dm.setup()
    stream = dm.train_dataloader()
    tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop([MODEL, MODEL], antialias=True)])
    plain = DataLoader(
        ImageFolder(str(root / "train"), transform=tf),
        batch_size=BATCH,
        shuffle=True,
        num_workers=WORKERS,
        persistent_workers=True,
    )
    best = {"stream": float("inf"), "plain": float("inf")}
    n = {"stream": _epoch(stream), "plain": _epoch(plain)}  # warm-up: workers start, page cache
    for _ in range(repeats):
        for name, loader in (("plain", plain), ("stream", stream)):
            t0 = time.perf_counter()
            n[name] = _epoch(loader)
            best[name] = min(best[name], time.perf_counter() - t0)
    rate = {k: n[k] / best[k] for k in best}
    return [
        f"{n['stream']} JPEGs {NATIVE}x{NATIVE} RGB -> RandomResizedCrop {MODEL}x{MODEL}, "
        f"batch {BATCH}, {WORKERS} workers, best of {repeats} steady-state epochs:",
        "",
        "| loader | images/s |",
        "|---|---|",
        f"| ImageFolder + DataLoader (plain) | {rate['plain']:.0f} |",
        f"| data.loading=stream | {rate['stream']:.0f} |",
        f"| **ratio stream / plain** | **{rate['stream'] / rate['plain']:.2f}** |",
    ]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children.get(p, [])
    return pids


def pss_kb(pid: int, field: str = "Pss:") -> int:
    """One ``smaps_rollup`` field of ``pid`` (kB); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kb(pid: int) -> dict[int, int] | None:
    """PSS (kB) of ``pid`` and each descendant, read as one consistent snapshot, or None.

    A worker forking or exiting mid-read moves its shared pages between processes' PSS, and a
    sum read across that moment counts them twice (seen: +300 MB spikes at loader start/stop);
    such a read is dropped: the tree must be the same before and after and every process alive."""
    pids = tree_pids(pid)
    kb = {p: pss_kb(p) for p in pids}
    if sorted(tree_pids(pid)) != sorted(pids) or not all(kb.values()):
        return None
    return kb


def run_overrides(root: Path, loading: str, log_dir: Path) -> list[str]:
    """The `src/train.py` overrides of the memory section's run on ``root``."""
    return [
        "data=folder",
        f"data.root={root}",
        f"data.image_size=[{MODEL},{MODEL}]",
        "data.channels=3",
        f"data.loading={loading}",
        f"data.memory_budget_mb={BUDGET_MB}",
        f"data.num_workers={WORKERS}",
        f"data.batch_size={BATCH}",
        "data.cache_dir=null",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.5,0.5,0.5]",
        "model=simple_cnn",
        "trainer.max_epochs=1",
        "test=false",
        "logger=none",
        "callbacks=none",
        "+trainer.enable_progress_bar=false",
        "extras.print_config=false",
        f"paths.log_dir={log_dir}",
    ]


def peak_pss(overrides: list[str]) -> tuple[float, int]:
    """Run ``src/train.py overrides`` and sample its tree's PSS; (peak MB, exit code)."""
    proc = subprocess.Popen(
        [sys.executable, str(project_root() / "src" / "train.py"), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            kb = tree_pss_kb(proc.pid)
            peak[0] = max(peak[0], sum(kb.values()) if kb else 0)
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return peak[0] / 1024, proc.returncode


def memory(roots: list[tuple[Path, int]], tmp: Path) -> list[str]:
    lines = [
        f"Peak PSS of the `src/train.py` process tree (1 epoch, model=simple_cnn, input {MODEL}x{MODEL}, "
        f"batch {BATCH}, data.memory_budget_mb={BUDGET_MB}):",
        "",
        "| images | decoded size | x budget | loading | peak PSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for root, n in roots:
        decoded = n * 3 * MODEL * MODEL / 2**20
        for loading in ("auto", "memory"):
            mb, rc = peak_pss(run_overrides(root, loading, tmp / "logs"))
            shown = "stream (auto)" if loading == "auto" else "memory"
            status = "" if rc == 0 else f" (exit {rc})"
            lines.append(
                f"| {n} | {decoded:.1f} MB | {decoded / BUDGET_MB:.0f}x | {shown} | {mb:.0f}{status} |"
            )
    return lines


def run(args) -> list[str]:
    repeats = 1 if args.quick else args.repeats
    sizes = (200, 600) if args.quick else (2000, 6000)
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as d:
        tmp = Path(d)
        roots = [(make_jpeg_folders(tmp / f"n{n}", n, n // 10), n + n // 10) for n in sizes]
        torch.set_num_threads(1)
        lines = throughput(roots[0][0], repeats)
        lines += ["", *memory(roots, tmp)]
    return lines
