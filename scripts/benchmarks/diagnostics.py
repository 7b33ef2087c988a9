"""Cost of the TensorBoard diagnostics callback on an MNIST LeNet epoch (train + validation).

The callback is in ``callbacks/default.yaml``, so it must not slow training noticeably. Two
numbers: whole fit epochs with and without it (interleaved, best of the repeats), and the time
spent inside the callback itself (collection per validation batch + rendering/writing once per
epoch). Both in wall time and in CPU time of the process: on a shared machine the CPU time is
the one that other processes disturb least.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks._common import compose_cfg
from imgcls.builder import build_datamodule, build_model, build_trainer
from imgcls.callbacks.diagnostics import ClassificationDiagnostics


class TimedDiagnostics(ClassificationDiagnostics):
    """The callback, with the wall time of its own work accumulated."""

    wall = 0.0
    cpu = 0.0

    def _timed(self, fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        w, c = time.perf_counter(), time.process_time()
        fn(*args, **kwargs)
        TimedDiagnostics.wall += time.perf_counter() - w
        TimedDiagnostics.cpu += time.process_time() - c

    def _collect(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._timed(super()._collect, *args, **kwargs)

    def _write(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._timed(super()._write, *args, **kwargs)


def fit_epoch(dm, overrides: list[str], out: Path, timed: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``fit`` epoch with validation."""
    cfg = compose_cfg(
        [
            "trainer.max_epochs=1",
            "+trainer.num_sanity_val_steps=0",
            "~callbacks.diagnostics",
            "test=false",
            *overrides,
        ],
        out,
    )
    model = build_model(cfg, dm)
    trainer, _, _ = build_trainer(cfg)
    if timed:
        trainer.callbacks.append(TimedDiagnostics())
    w, c = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - w, time.process_time() - c


def run(args) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench_diagnostics_"))
    quick = (
        ["+trainer.limit_train_batches=40", "+trainer.limit_val_batches=2"] if args.quick else []
    )
    dm = build_datamodule(compose_cfg([], tmp / "cfg"))
    repeats = 1 if args.quick else args.repeats
    # warm-up (first-use costs: kernels, TensorBoard writer, imports) off the clock
    fit_epoch(
        dm, ["+trainer.limit_train_batches=5", "+trainer.limit_val_batches=1"], tmp / "warm", True
    )
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    inside: list[tuple[float, float]] = []
    for r in range(repeats):
        for timed in (False, True):
            TimedDiagnostics.wall = TimedDiagnostics.cpu = 0.0
            times[timed].append(fit_epoch(dm, quick, tmp / f"{int(timed)}_{r}", timed))
            if timed:
                inside.append((TimedDiagnostics.wall, TimedDiagnostics.cpu))
    off, on = (min(w for w, _ in times[t]) for t in (False, True))
    off_cpu, on_cpu = (min(c for _, c in times[t]) for t in (False, True))
    in_wall, in_cpu = min(w for w, _ in inside), min(c for _, c in inside)
    return [
        f"LeNet on MNIST, 1 epoch ({len(dm.splits['train']):,} train + {len(dm.splits['val']):,} val images"
        f"{', quick: 40 train / 2 val batches' if args.quick else ''}), default callbacks + TensorBoard, "
        f"{repeats} interleaved runs each",
        "",
        "| contender | best fit wall time (s) | best fit CPU time (s) |",
        "|---|---|---|",
        f"| without diagnostics | {off:.2f} | {off_cpu:.2f} |",
        f"| with diagnostics | {on:.2f} | {on_cpu:.2f} |",
        "",
        f"- inside the callback per epoch: {in_wall:.3f} s wall ({in_wall / off:.1%} of the epoch without it), "
        f"{in_cpu:.3f} s CPU ({in_cpu / off_cpu:.1%})",
        f"- with/without ratio: wall {on / off:.3f}, CPU {on_cpu / off_cpu:.3f}",
    ]
