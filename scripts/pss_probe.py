"""Peak PSS per process of a short streaming run (main + each loader worker), to see which
process grows with the dataset: `python scripts/pss_probe.py N [overrides...]` makes N JPEGs
(plus N/10 for validation) under /tmp/pss once, then runs src/train.py on them."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from benchmarks import streaming as S  # noqa: E402  (scripts/ is not a package)

n = int(sys.argv[1])
root = Path(f"/tmp/pss/n{n}")
if not root.exists():
    S.make_jpeg_folders(root, n, n // 10)
# the benchmark's run (memory budget 16 MB, 2 workers), shortened; later overrides win
base = [
    *S.run_overrides(root, "auto", Path("/tmp/pss/logs")),
    "+trainer.limit_train_batches=34",
    "+trainer.limit_val_batches=3",
    *sys.argv[2:],
]
proc = subprocess.Popen(
    [sys.executable, str(HERE.parent / "src" / "train.py"), *base],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
)
peaks = {}


def pss(p, key="Pss:"):
    for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) // 1024


def sample():
    while proc.poll() is None:
        kids = [
            int(d) for d in os.listdir("/proc") if d.isdigit() and Path(f"/proc/{d}/stat").exists()
        ]
        tree = [proc.pid]
        for d in kids:
            try:
                if (
                    int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    == proc.pid
                ):
                    tree.append(d)
            except Exception:
                pass
        tot = 0
        for p in tree:
            try:
                v = pss(p)
                a = pss(p, "Pss_Anon:")
                tot += v
                k = "main" if p == proc.pid else f"w{p}"
                peaks[k] = max(peaks.get(k, (0, 0)), (v, a))
            except Exception:
                pass
        peaks["total"] = max(peaks.get("total", (0, 0)), (tot, 0))
        time.sleep(0.2)


t = threading.Thread(target=sample, daemon=True)
t.start()
_, err = proc.communicate()
t.join()
print(n, sys.argv[2:], "rc", proc.returncode, {k: v for k, v in peaks.items()})
if proc.returncode:
    print(err[-1500:])
