"""The decode cache's lock: one process decodes while the others wait, a killed holder frees it,
and no lock (no flock, no directory) means every process decodes on its own."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from imgcls.data import decode_cache
from imgcls.data.decode_cache import DecodedCache
from tests.conftest import ROOT

HOLDER = """
import sys, time
from imgcls.data.decode_cache import DecodedCache
with DecodedCache(sys.argv[1], "k").lock():
    print("held", flush=True)
    time.sleep(120)
"""


def _lock_in_thread(cache: DecodedCache) -> threading.Event:
    got = threading.Event()

    def take() -> None:
        with cache.lock():
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got


def test_waiters_block_until_the_holder_is_done(tmp_path: Path) -> None:
    cache = DecodedCache(tmp_path, "k")
    with cache.lock():
        got = _lock_in_thread(cache)
        assert not got.wait(0.3)  # the second taker waits for the first
    assert got.wait(5)
    assert not list(tmp_path.iterdir())  # the lock file went with the lock


def test_a_killed_holder_does_not_keep_the_lock(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got = _lock_in_thread(DecodedCache(tmp_path, "k"))
        assert not got.wait(0.3)
        holder.kill()  # no release: the OS drops its lock with the process
        holder.wait(10)
        assert got.wait(5)
    finally:
        holder.kill()
        holder.wait(10)


def test_without_a_lock_every_process_decodes(tmp_path: Path, monkeypatch) -> None:
    def no_flock(self, *args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(decode_cache.FileLock, "acquire", no_flock)
    cache = DecodedCache(tmp_path, "k")
    t0 = time.perf_counter()
    with cache.lock(), cache.lock():  # neither waits
        pass
    assert time.perf_counter() - t0 < 1.0
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with DecodedCache(blocker / "cache", "k").lock():  # no directory: runs unlocked
        pass
