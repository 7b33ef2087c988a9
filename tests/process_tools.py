"""Run entry points as their own process group and make sure nothing they started outlives them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

# the repo root: tests.fault_helpers callbacks; src: what submitit workers import
ENV = {
    "PYTHONWARNINGS": "ignore",
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
}


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def nothing_left_behind(marker: str | Path, grace: float = 3.0) -> Iterator[None]:
    """After the block: no process mentioning ``marker`` is alive ``grace`` s later (any left
    is killed, and the test fails)."""
    try:
        yield
    finally:
        time.sleep(grace)
        left = processes_mentioning(str(marker))
        kill_all([pid for pid, _ in left])
    assert not left, f"processes left behind: {left}"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def start_entry(script: str, *overrides: str, out: Path) -> subprocess.Popen:
    """``python src/<script>.py overrides`` in a new session, output to files under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "src" / f"{script}.py"), *overrides]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **ENV},
        stdout=open(out / "stdout.txt", "w"),  # noqa: SIM115 (the child owns it)
        stderr=open(out / "stderr.txt", "w"),  # noqa: SIM115
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, out: Path, timeout: float, t0: float) -> Finished:
    """Wait for ``proc`` (its group is killed after ``timeout`` s, failing the test)."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tail = (out / "stderr.txt").read_text()[-3000:]
        raise AssertionError(f"timed out after {timeout} s: {tail}") from None
    return Finished(
        code,
        (out / "stdout.txt").read_text(),
        (out / "stderr.txt").read_text(),
        time.monotonic() - t0,
    )


def run_entry_isolated(script: str, *overrides: str, out: Path, timeout: float = 600) -> Finished:
    t0 = time.monotonic()
    return finish(start_entry(script, *overrides, out=out), out, timeout, t0)
