"""One writer per storage root: the lock that `wmtp build` and every other command that
writes to the storage take.

The lock is an `flock` on `.wmtp/build.lock`, which the OS drops when its process dies, so
a kill never leaves it stuck. The holder writes its pid and command into the file, so a
refused command can say what is running. Within one process the lock is re-entrant: `wmtp
demo` holds it and runs the build, which takes it again. A run folder's lock
(`storage.run_folder`) is the same kind of lock (`exclusive`).

Once the lock is held, temporary files that interrupted writes left in the asset folders
are removed: no other wmtp process can be writing them. A temporary file whose name
carries the pid of a live process (a library user writing without the lock) is kept.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER
from weighted_mtp.storage.layout import CACHE_DIR, Layout
from weighted_mtp.storage.tree import iter_files

log = logging.getLogger(__name__)
_held: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


def holder_of(path: Path) -> str:
    """Who holds the lock file `path`, as its holder recorded it ("`wmtp build` (pid 42)",
    with the host when it is another machine's)."""
    try:
        first, _, host = path.read_text(encoding="utf-8").strip().partition("\n")
    except (OSError, UnicodeDecodeError):
        first = host = ""
    pid, _, command = first.partition(" ")
    if not pid.isdigit():
        return "another wmtp process"
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"`{command or 'wmtp'}` (pid {pid}{where})"


@contextmanager
def exclusive(path: Path, command: str, refusal: Callable[[str], WmtpError]) -> Iterator[None]:
    """Hold the `flock` on `path` (created if absent, never through a symlink) while
    `command` runs, its pid, command and host recorded in the file. If another process
    holds it, `refusal(holder_of(path))` is raised at once (nothing waits). The OS drops the
    lock when its process dies, so a killed holder never leaves it stuck. Re-entrant within
    a process."""
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise WmtpError("the lock file is a symlink", path=path, hint="remove it") from None
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refusal(holder_of(path)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {command}\n{socket.gethostname()}\n")
        handle.flush()
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(layout: Layout) -> str:
    """Who holds the storage lock, as its holder recorded it ("`wmtp build` (pid 42)")."""
    return holder_of(layout.build_lock)


@contextmanager
def storage_lock(layout: Layout, command: str) -> Iterator[None]:
    """Hold the storage root's lock while `command` writes to it; if another process
    holds it, one WmtpError naming that process (nothing waits or is touched)."""
    layout.build_lock.parent.mkdir(parents=True, exist_ok=True)

    def refusal(holder: str) -> WmtpError:
        return WmtpError(
            f"another wmtp process is writing to this storage: {holder}",
            path=layout.root,
            hint="wait for it to finish, then rerun",
        )

    with exclusive(layout.build_lock, command, refusal):
        yield


def _writer_alive(path: Path) -> bool:
    """Whether the temporary file's name carries the pid of another live process."""
    pid = path.name.partition(TEMP_MARKER)[2].partition("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_files(layout: Layout) -> list[Path]:
    """Temporary files of interrupted atomic writes in the asset folders (download caches,
    where partial downloads resume, excluded)."""
    found = []
    for top in layout.asset_dirs():
        for path in iter_files(top):
            inside_cache = CACHE_DIR in path.relative_to(top).parts[:-1]
            if TEMP_MARKER in path.name and not inside_cache and not _writer_alive(path):
                found.append(path)
    return found


def remove_stale_temp_files(layout: Layout) -> list[str]:
    """Remove `stale_temp_files`; only call while holding `storage_lock`. Returns the
    removed files relative to the root."""
    if layout.build_lock not in _held:
        raise RuntimeError("remove_stale_temp_files needs the storage lock")
    removed = []
    for path in stale_temp_files(layout):
        path.unlink(missing_ok=True)
        removed.append(layout.relative(path))
    if removed:
        more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        log.info(
            f"removed {len(removed)} temporary file(s) a killed run left: "
            f"{', '.join(removed[:5])}{more}"
        )
    return removed


@contextmanager
def writing_to_storage(layout: Layout, command: str) -> Iterator[list[str]]:
    """What every command that writes to the storage does first: take the lock, then
    remove what killed runs left half-written. Yields the removed files."""
    with storage_lock(layout, command):
        yield remove_stale_temp_files(layout)
