"""Reading upstream files row by row: Parquet by record batch, JSONL and `.jsonl.gz`.

Every reader is a generator, so memory holds one batch or one line whatever the file size,
and every failure names the file and line (or row group) and what to do about it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weighted_mtp.errors import WmtpError

PARQUET_BATCH_ROWS = 8  # CodeContests rows carry MBs of generated tests


def iter_parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file as Python dicts (nested structs become dicts), batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise WmtpError(
            f"cannot read Parquet file: {exc}", path=path, hint="download it again"
        ) from None


def _open_lines(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` for each non-blank line; an empty file is an error."""
    seen = False
    try:
        with _open_lines(path) as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                yield number, parse_json_line(raw, path, number)
                seen = True
    except FileNotFoundError:
        raise WmtpError("file not found", path=path) from None
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
    with path.open("rb") as handle:
        handle.seek(start)
        number, position = first_line, start
        while position < end:
            raw = handle.readline()
            if not raw:
                break
            position += len(raw)
            if raw.strip():
                yield number, parse_json_line(raw, path, number)
            number += 1


def line_chunks(path: Path, target_bytes: int) -> list[tuple[int, int, int]]:
    """`(start, end, first line number)` of pieces of about `target_bytes`, cut after a
    newline, so that separate processes can each read one."""
    chunks, start, line, position = [], 0, 1, 0
    lines_in_chunk, block_size = 0, max(1, min(1 << 20, target_bytes))
    with path.open("rb") as handle:
        while block := handle.read(block_size):
            lines_in_chunk += block.count(b"\n")
            position += len(block)
            if position - start >= target_bytes:
                extra = handle.readline()
                position += len(extra)
                lines_in_chunk += extra.endswith(b"\n")
                chunks.append((start, position, line))
                start, line, lines_in_chunk = position, line + lines_in_chunk, 0
    if position > start or not chunks:
        chunks.append((start, position, line))
    return chunks


def parse_json_line(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WmtpError(
            f"line {number} is not UTF-8 (byte {exc.start})",
            path=path,
            hint="re-download or re-encode the file as UTF-8",
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WmtpError(
            f"line {number} is not valid JSON (column {exc.colno}: {exc.msg})", path=path
        ) from None
    if not isinstance(obj, dict):
        raise WmtpError(f"line {number} is a JSON {type(obj).__name__}, not an object", path=path)
    return obj


def field(row: dict[str, Any], name: str, path: Path, line: int) -> Any:
    """`row[name]`, or an error naming the file, line and the missing field."""
    try:
        return row[name]
    except KeyError:
        raise WmtpError(
            f"line {line}: missing field {name!r}",
            path=path,
            hint="is this the right dataset file?",
        ) from None
