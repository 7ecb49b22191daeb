"""Reading JSON-lines files, plain or `.jsonl.gz`, line by line within the limits.

Memory holds one line and one block whatever the file size; a line beyond
`max_line_bytes`, a gzip stream that expands beyond its allowance and non-standard JSON
(NaN, Infinity) are each one error naming the file and line. Upstream datasets, processed
splits, small sets and evaluation outputs are all read here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import Limits, current_limits, raise_hint
from weighted_mtp.storage.atomic import loads_strict
from weighted_mtp.storage.regular import open_regular

BLOCK_BYTES = 1 << 20
_BLANK_BYTES = frozenset(b" \t\r\n\f\v")
_NON_BLANK = re.compile(rb"[^ \t\r\n\f\v]")


class Readable(Protocol):
    """A binary stream as the line reader uses it."""

    def read(self, size: int, /) -> bytes: ...


class _BoundedGzip:
    """A gzip stream that stops with an error once it has expanded beyond its allowance:
    `max_gzip_ratio` times the compressed size (at least `min_gzip_allowance`), never more
    than `max_decompressed_bytes`. A small file cannot expand into gigabytes unnoticed."""

    def __init__(self, handle: BinaryIO, path: Path, limits: Limits) -> None:
        compressed = os.fstat(handle.fileno()).st_size
        ratio_allowance = max(limits.min_gzip_allowance, limits.max_gzip_ratio * compressed)
        self.allowed = min(ratio_allowance, limits.max_decompressed_bytes)
        self.limit_name = (
            "max_decompressed_bytes"
            if limits.max_decompressed_bytes < ratio_allowance
            else "max_gzip_ratio"
        )
        self.limits = limits
        self.path = path
        self.expanded = 0
        self._handle = handle
        self._gzip = gzip.GzipFile(fileobj=handle, mode="rb")

    def read(self, size: int) -> bytes:
        data = self._gzip.read(size)
        self.expanded += len(data)
        if self.expanded > self.allowed:
            limit = getattr(self.limits, self.limit_name)
            raise WmtpError(
                f"gzip file expands beyond {self.allowed:,} bytes "
                f"({self.limit_name.replace('_', ' ')} {limit:,})",
                path=self.path,
                hint=raise_hint(self.limit_name, limit),
            )
        return data

    def __enter__(self) -> _BoundedGzip:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gzip.close()
        self._handle.close()


def _open_lines(path: Path, limits: Limits) -> _BoundedGzip | BinaryIO:
    handle = open_regular(path)
    if path.name.endswith(".gz"):
        return _BoundedGzip(handle, path, limits)
    return handle


def _line_too_long(path: Path, number: int, limits: Limits) -> WmtpError:
    return WmtpError(
        f"line {number} is longer than {limits.max_line_bytes:,} bytes",
        path=path,
        hint=raise_hint("max_line_bytes", limits.max_line_bytes),
    )


def iter_lines(
    handle: Readable, path: Path, limits: Limits, *, first_line: int = 1, size: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """`(line number, line)` of every non-blank line of a binary stream (its first `size`
    bytes if given), without the newline.

    Memory is bounded by `limits.max_line_bytes` plus one block: a longer line is an error
    before it is held whole. Runs of blank lines are skipped by a few C-level searches per
    block, not line by line."""
    buffer, start, number = bytearray(), 0, first_line
    remaining = size
    at_end = False
    while True:
        newline = buffer.find(b"\n", start)
        if newline < 0:
            if len(buffer) - start > limits.max_line_bytes:
                raise _line_too_long(path, number, limits)
            if at_end:
                if _NON_BLANK.search(buffer, start):
                    yield number, bytes(buffer[start:])
                return
            want = BLOCK_BYTES if remaining is None else min(BLOCK_BYTES, remaining)
            block = handle.read(want) if want else b""
            if remaining is not None:
                remaining -= len(block)
            at_end = not block
            del buffer[:start]
            buffer += block
            start = 0
            continue
        if buffer[start] in _BLANK_BYTES and not _NON_BLANK.search(buffer, start, newline):
            following = _NON_BLANK.search(buffer, newline)
            stop = buffer.rfind(b"\n", start, following.start() if following else len(buffer))
            number += buffer.count(b"\n", start, stop + 1)
            start = stop + 1
            continue
        if newline - start > limits.max_line_bytes:
            raise _line_too_long(path, number, limits)
        yield number, bytes(buffer[start:newline])
        number, start = number + 1, newline + 1


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` for each non-blank line; an empty file is an error."""
    limits = current_limits()
    seen = False
    try:
        with _open_lines(path, limits) as handle:
            for number, raw in iter_lines(handle, path, limits):
                yield number, parse_json_line(raw, path, number)
                seen = True
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise WmtpError(f"corrupt gzip file ({exc})", path=path) from None
    if not seen:
        raise WmtpError(
            "file is empty: no JSON records", path=path, hint="download the dataset again"
        )


def iter_jsonl_range(
    path: Path, start: int, end: int, first_line: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Like `iter_jsonl`, for the lines in bytes [start, end) of a plain file, `start` being
    the beginning of line `first_line` (lets workers share one file)."""
    limits = current_limits()
    with open_regular(path) as handle:
        handle.seek(start)
        for number, raw in iter_lines(
            handle, path, limits, first_line=first_line, size=end - start
        ):
            yield number, parse_json_line(raw, path, number)


def line_chunks(path: Path, target_bytes: int) -> list[tuple[int, int, int]]:
    """`(start, end, first line number)` of pieces of about `target_bytes`, cut after a
    newline, so that separate processes can each read one."""
    limits = current_limits()
    chunks, start, line, position = [], 0, 1, 0
    lines_in_chunk, block_size = 0, max(1, min(1 << 20, target_bytes))
    with open_regular(path) as handle:
        while block := handle.read(block_size):
            lines_in_chunk += block.count(b"\n")
            position += len(block)
            if position - start >= target_bytes:
                extra = handle.readline(limits.max_line_bytes + 1)
                if len(extra) > limits.max_line_bytes:
                    raise _line_too_long(path, line + lines_in_chunk, limits)
                position += len(extra)
                lines_in_chunk += extra.endswith(b"\n")
                chunks.append((start, position, line))
                start, line, lines_in_chunk = position, line + lines_in_chunk, 0
    if position > start or not chunks:
        chunks.append((start, position, line))
    return chunks


def parse_json_line(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    """One JSON object per line, standard JSON only (no NaN/Infinity)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WmtpError(
            f"line {number} is not UTF-8 (byte {exc.start})",
            path=path,
            hint="re-download or re-encode the file as UTF-8",
        ) from None
    try:
        obj = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise WmtpError(
            f"line {number} is not valid JSON (column {exc.colno}: {exc.msg})", path=path
        ) from None
    except ValueError as exc:  # NaN/Infinity, an overflowing float, a giant integer
        raise WmtpError(
            f"line {number} is not standard JSON ({exc})",
            path=path,
            hint="NaN and Infinity are not JSON: fix or re-download the file",
        ) from None
    if not isinstance(obj, dict):
        raise WmtpError(f"line {number} is a JSON {type(obj).__name__}, not an object", path=path)
    return obj
