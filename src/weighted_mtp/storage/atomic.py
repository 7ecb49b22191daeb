"""Atomic file output: a file appears under its final name complete, or not at all.

Writes go to a temporary file in the destination folder (same filesystem, so the final
`os.replace` is atomic), are fsynced, then renamed; the folder is fsynced so the rename
survives a power loss. If anything fails, the temporary file is removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO, overload

from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import current_limits, raise_hint
from weighted_mtp.storage.regular import open_regular

TEMP_MARKER = ".wmtp-tmp-"


def temp_prefix(name: str) -> str:
    """Hidden, marked as temporary, and carrying the writer's pid, so a clean-up can tell
    an interrupted write from one a live process is still making."""
    return f".{name}{TEMP_MARKER}{os.getpid()}-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@overload
def atomic_write(
    path: str | Path, mode: Literal["wb"] = "wb", encoding: None = None
) -> AbstractContextManager[BinaryIO]: ...
@overload
def atomic_write(
    path: str | Path, mode: Literal["w"], encoding: str | None = None
) -> AbstractContextManager[TextIO]: ...
def atomic_write(
    path: str | Path, mode: str = "wb", encoding: str | None = None
) -> AbstractContextManager[BinaryIO | TextIO]:
    """Open a temporary sibling of `path` for writing; rename it to `path` on success."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports 'w' and 'wb', not {mode!r}")
    return _atomic_write(Path(path), mode, encoding)


@contextmanager
def _atomic_write(path: Path, mode: str, encoding: str | None) -> Iterator[BinaryIO | TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    tmp = Path(tmp_name)
    try:
        handle: BinaryIO | TextIO
        if mode == "wb":
            handle = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path` to fill; when the block ends without
    error it takes `path`'s name, else it is removed. A folder already at `path` (what an
    earlier, interrupted finish of the same run wrote) is replaced: moved to a temporary
    name, and removed once the new one is in place; anything else there (a file, a
    symlink) is refused, untouched. Only for folders inside one the caller owns and has
    locked (a run folder)."""
    tmp = path.with_name(f"{temp_prefix(path.name)}partial")
    old = path.with_name(f"{temp_prefix(path.name)}replaced")
    tmp.mkdir()
    try:
        yield tmp
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise WmtpError(
                f"{path.name} is not a folder this run wrote",
                path=path,
                hint="move it out of the run folder, then rerun with --resume",
            )
        _fsync_dir(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        if old.exists() and not path.exists():
            old.rename(path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def move_into_place(finished: Path, path: Path) -> None:
    """Give a complete file written elsewhere on the same filesystem (e.g. a resumable
    download) its final name atomically, durable across a power loss."""
    with finished.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.chmod(finished, 0o644)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(finished, path)
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def dumps_json(obj: Any) -> str:
    """The project's JSON style for files people read: indented, UTF-8, trailing newline.
    Standard JSON only: a NaN or Infinity is a ValueError, never written."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, dumps_json(obj))


class NonStandardJson(ValueError):
    """A NaN, Infinity or out-of-range number: Python's json accepts them, JSON does not."""


def _refuse_constant(name: str) -> Any:
    raise NonStandardJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonStandardJson(f"{text[:40]} is out of the range of a float")
    return value


def loads_strict(text: str) -> Any:
    """`json.loads` of standard JSON only: NaN, Infinity and numbers that overflow to them
    are refused (NonStandardJson), as is an integer too long to parse (ValueError)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file (standard JSON only, a regular file within the line-size limit),
    turning the usual failures into one clear error."""
    path = Path(path)
    limit = current_limits().max_line_bytes
    with open_regular(path, what) as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise WmtpError(
                f"{what} is larger than {limit:,} bytes",
                path=path,
                hint=raise_hint("max_line_bytes", limit),
            )
        data = handle.read(limit + 1)
    try:
        return loads_strict(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WmtpError(f"{what} is not UTF-8 (byte {exc.start})", path=path) from None
    except json.JSONDecodeError as exc:
        raise WmtpError(
            f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            path=path,
        ) from None
    except ValueError as exc:  # NonStandardJson, or an integer of thousands of digits
        raise WmtpError(
            f"{what} is not standard JSON ({exc})",
            path=path,
            hint="NaN, Infinity and numbers beyond a float's range are not allowed",
        ) from None


def read_json_or_none(path: str | Path | None, what: str = "JSON file") -> Any:
    """A JSON file's content, or None if it is absent or unreadable: for files whose loss
    only costs recomputation, or whose problems another check reports."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return read_json(path, what)
    except WmtpError:
        return None


def ensure_free_space(directory: str | Path, needed: int, what: str) -> None:
    """Fail before writing if `needed` bytes will not fit (5% + 64 MiB headroom kept)."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    margin = needed // 20 + (64 << 20)
    if free < needed + margin:
        raise WmtpError(
            f"not enough free disk for {what}: need {_gib(needed + margin)}, {_gib(free)} free",
            path=directory,
            hint="free some space or choose another --root",
        )


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
