"""Peak PSS per process of a short streaming run (main + each loader worker), to see which
process grows with the dataset: `python scripts/pss_probe.py N [overrides...]` makes N JPEGs
(plus N/10 for validation) under /tmp/pss once, then runs src/train.py on them."""

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
peaks: dict[str, tuple[int, int]] = {}  # process -> peak (PSS, anonymous PSS), MB


def sample() -> None:
    while proc.poll() is None:
        kb = S.tree_pss_kb(proc.pid)
        for p, pss in (kb or {}).items():
            key = "main" if p == proc.pid else f"w{p}"
            peaks[key] = max(
                peaks.get(key, (0, 0)), (pss // 1024, S.pss_kb(p, "Pss_Anon:") // 1024)
            )
        if kb:
            peaks["total"] = max(peaks.get("total", (0, 0)), (sum(kb.values()) // 1024, 0))
        time.sleep(0.2)


t = threading.Thread(target=sample, daemon=True)
t.start()
_, err = proc.communicate()
t.join()
print(n, sys.argv[2:], "rc", proc.returncode, peaks)
if proc.returncode:
    print(err[-1500:])
