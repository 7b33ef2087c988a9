"""Benchmarks measured side by side in one run; prints ratios. Results go to BENCHMARKS.md.

    python scripts/benchmark.py                 # every section
    python scripts/benchmark.py --only pipeline # one section (see --list)

Each section lives in ``scripts/benchmarks/<name>.py`` and defines ``run(args) -> list[str]``
(markdown lines). Timings on 2 shared cores are noisy: sections interleave the contenders and
report the best of several repeats.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmarks/ section package lives beside this script


def sections() -> list[str]:
    import benchmarks

    return sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated section names")
    parser.add_argument("--list", action="store_true", help="list sections and exit")
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats per contender (best is kept)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args()
    names = sections()
    if args.list:
        print("\n".join(names))
        return
    chosen = [s for s in args.only.split(",") if s] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; have {names}")
    import torch

    print(f"# benchmark: {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}"
    )
    for name in chosen:
        t0 = time.perf_counter()
        print(f"\n## {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        for line in module.run(args):
            print(line, flush=True)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
