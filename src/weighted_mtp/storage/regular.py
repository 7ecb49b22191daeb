"""Opening input files only if they are regular files.

A FIFO named like an expected file would block a reader forever, and a device such as
/dev/zero never ends: only regular files (or symlinks to regular files) are read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from weighted_mtp.errors import WmtpError

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}
REGULAR_HINT = "only regular files (or symlinks to regular files) are read; replace it"


def special_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a FIFO", ...)."""
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def require_regular(path: Path, what: str = "file") -> Path:
    """`path` if it is (or links to) a regular file; else one WmtpError naming it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise WmtpError(f"{what} not found", path=path) from None
    kind = special_kind(mode)
    if kind:
        raise WmtpError(f"{what} is {kind}, not a regular file", path=path, hint=REGULAR_HINT)
    return path


def open_regular(path: Path, what: str = "file") -> BinaryIO:
    """Open `path` for binary reading, refusing anything but a regular file. The file is
    opened non-blocking and checked on the open descriptor, so a FIFO cannot hang it and
    a swap after a check cannot slip through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise WmtpError(f"{what} not found", path=path) from None
    except OSError:  # a socket cannot even be opened: say what it is
        require_regular(path, what)
        raise
    try:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind:
            raise WmtpError(f"{what} is {kind}, not a regular file", path=path, hint=REGULAR_HINT)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    # Outside the cleanup: fdopen owns the descriptor as soon as its file object exists, so
    # an interrupt inside it must not close the descriptor a second time (EBADF would hide
    # the KeyboardInterrupt, or close a descriptor reused by then).
    return os.fdopen(fd, "rb")
