"""Build a missing default digits root (``<digits_dir>/digits_{csv,jpg,folder}``) from MNIST.

A fresh clone has ``data/MNIST`` but not ``data/digits_*``: experiments build theirs on first use
(``scripts/make_digit_datasets.py``); a user's own missing path keeps its error. Local rank 0
builds under a file lock; the others wait for the script's atomic rename."""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import time
from collections.abc import Callable
from pathlib import Path

from imgcls.data.decode_cache import DecodedCache
from imgcls.errors import DataError
from imgcls.utils.files import project_root

log = logging.getLogger(__name__)

FORMS = ("csv", "jpg", "folder")
WAIT_SECONDS = 900.0


def digits_form(root: str | os.PathLike, digits_dir: str | os.PathLike | None) -> str | None:
    """``csv``/``jpg``/``folder`` when ``root`` is that default digits root, else ``None``."""
    if not digits_dir:
        return None
    root_path, base = Path(root).resolve(), Path(digits_dir).resolve()
    for form in FORMS:
        if root_path == base / f"digits_{form}":
            return form
    return None


def _mnist_dir(digits_dir: Path) -> Path:
    """``digits_dir`` when it holds ``MNIST/raw``, else the bundled copy under the project."""
    if (digits_dir / "MNIST" / "raw").is_dir():
        return digits_dir
    return project_root() / "data"


def _script_main() -> Callable[[list[str]], int] | None:
    path = project_root() / "scripts" / "make_digit_datasets.py"
    return runpy.run_path(str(path))["main"] if path.is_file() else None


def ensure_digits(root: str | os.PathLike, digits_dir: str | os.PathLike | None) -> bool:
    """Build the missing default digits set at ``root`` (local rank 0); ``True`` if built."""
    form = digits_form(root, digits_dir)
    if form is None or Path(root).exists():
        return False
    base = Path(digits_dir)  # type: ignore[arg-type]
    main = _script_main()
    if main is None:  # an installed package without scripts/: the usual missing-data error
        return False
    with DecodedCache(base, f".digits_{form}").lock():
        if Path(root).exists():  # another process built it while this one waited
            return False
        mnist = _mnist_dir(base)
        log.info("%s is missing: building it from MNIST in %s (once)", root, mnist)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(None):
            rc = main(["--out", str(base), "--mnist-dir", str(mnist), "--forms", form])
        if rc != 0 or not Path(root).is_dir():
            raise DataError(f"could not build {root} from MNIST in {mnist}")
        log.info("built %s in %.1f s", root, time.perf_counter() - t0)
    return True


def wait_for_digits(root: str | os.PathLike, digits_dir: str | os.PathLike | None) -> None:
    """Other ranks: wait (bounded) for local rank 0 to finish building the default root."""
    if digits_form(root, digits_dir) is None:
        return
    deadline = time.monotonic() + WAIT_SECONDS
    while not Path(root).exists() and time.monotonic() < deadline:
        time.sleep(1.0)
