"""What a data root may hand a run: files whose real path (symlinks resolved) lies inside it.

A dataset is input from someone else: a symlinked image or class folder must not make a run
read ``~/.ssh`` (unless ``data.allow_outside_root``), and a symlink loop must not make the
listing walk forever. Paths the command line names outside ``data.root`` (an absolute
``data.image_dir``) are the user's own choice and become roots of their own."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from imgcls.errors import DataError

OPTION = "data.allow_outside_root"


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


class DataRoot:
    """Checks paths against the real path of ``root``; ``allow_outside`` turns the check off
    (symlink loops are still refused)."""

    def __init__(self, root: str | os.PathLike, allow_outside: bool = False) -> None:
        self.path = os.path.normpath(os.path.abspath(root))
        self.bases = [os.path.realpath(root)]
        self.allow_outside = bool(allow_outside)
        self._real_dirs: dict[str, str] = {}

    def named(self, path: str | os.PathLike) -> None:
        """A file or folder the config names: checked when it lies in the root as written,
        else (the user pointed outside it on purpose) a folder becomes a root of its own."""
        norm = os.path.normpath(os.path.abspath(path))
        if norm == self.path:
            return
        if _within(norm, self.path):
            self.admit(norm)
        elif os.path.isdir(norm):
            self.bases.append(os.path.realpath(norm))

    def resolve(self, path: str) -> str:
        """The real path of an existing ``path``; a symlink loop raises ``DataError``."""
        try:
            return os.path.realpath(path, strict=True)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(f"{path} is a symlink loop") from None
            return os.path.realpath(path)  # missing: the caller reports it as not found

    def refuse(self, path: str, real: str) -> None:
        if not self.allow_outside and not any(_within(real, b) for b in self.bases):
            raise DataError(
                f"{path} points to {real}, outside the data root {self.bases[0]} "
                f"(set {OPTION}=true to read files outside it)"
            )

    def _real_dir(self, directory: str) -> str:
        if directory not in self._real_dirs:
            self._real_dirs[directory] = self.resolve(directory)
        return self._real_dirs[directory]

    def admit(self, path: str | os.PathLike) -> str:
        """The real path of ``path``, or ``DataError`` naming where it points when that lies
        outside the root. One ``lstat`` per file: folders are resolved once each."""
        p = os.fspath(path)
        directory, name = os.path.split(p)
        real = self._real_dir(directory)
        self.refuse(directory, real)
        real = self.resolve(p) if os.path.islink(p) else os.path.join(real, name)
        self.refuse(p, real)
        return real

    def images(
        self, start: Path, extensions: tuple[str, ...], problems: list[tuple[str, str]]
    ) -> list[Path]:
        """Files under ``start`` ending in one of ``extensions`` (any case), recursively, in
        ``make_dataset``'s order. Folder symlinks are followed only to inside the root, each real
        folder once; a link to a folder on its own path is a loop. Refusals go to ``problems`` as
        ``(path, message)`` and the link is skipped: the walk ends after one pass over the tree."""
        found: list[tuple[str, str]] = []
        seen: set[str] = set()
        top = os.fspath(start)
        try:
            stack = [(top, self._follow(top, (self._real_dir(os.path.dirname(top)),)))]
        except DataError as err:
            problems.append((top, str(err)))
            return []
        while stack:
            directory, chain = stack.pop()
            if not chain or chain[-1] in seen:
                continue
            seen.add(chain[-1])
            try:
                entries = os.scandir(directory)
            except OSError as err:
                problems.append((directory, f"cannot list {directory} ({err.strerror})"))
                continue
            with entries:
                for e in entries:
                    if e.is_symlink():
                        try:
                            sub = self._follow(e.path, chain)
                        except DataError as err:
                            problems.append((e.path, str(err)))
                            continue
                        if sub:
                            stack.append((e.path, sub))
                        elif e.name.lower().endswith(extensions):
                            found.append((directory, e.name))
                    elif e.is_dir():
                        stack.append((e.path, (*chain, os.path.join(chain[-1], e.name))))
                    elif e.name.lower().endswith(extensions):
                        found.append((directory, e.name))
        return [Path(d, n) for d, n in sorted(found)]

    def _follow(self, path: str, chain: tuple[str, ...]) -> tuple[str, ...]:
        """``chain`` extended by the folder ``path`` resolves to; ``()`` for a file."""
        real = self.resolve(path)
        self.refuse(path, real)
        if not os.path.isdir(real):
            return ()
        if any(_within(c, real) for c in chain):
            raise DataError(f"{path} is a symlink loop: it points to {real}, a folder it is in")
        return (*chain, real)
