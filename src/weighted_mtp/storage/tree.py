"""Walking the storage tree without following symlinks out of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def iter_files(root: Path) -> Iterator[Path]:
    """Regular files under `root` (never through a symlink), in a stable order."""
    if root.is_symlink() or not root.is_dir():
        if root.is_file() and not root.is_symlink():
            yield root
        return
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from iter_files(path)
        elif entry.is_file(follow_symlinks=False):
            yield path


def iter_non_regular(root: Path, skip: str | None = None) -> Iterator[Path]:
    """Entries under `root` that are neither folders nor regular files (symlinks, FIFOs,
    sockets, devices), without following symlinks; folders named `skip` are not entered.
    `iter_files` leaves them out, so whoever lists a tree with it must look at these."""
    if root.is_symlink() or not root.is_dir():
        return
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if entry.name != skip:
                yield from iter_non_regular(path, skip)
        elif not entry.is_file(follow_symlinks=False):
            yield path


def tree_size(path: Path) -> int:
    """Bytes used by regular files under `path`; symlinks count as nothing."""
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in iter_files(path))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
