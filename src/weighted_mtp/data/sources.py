"""Reading upstream files row by row (Parquet by record batch; JSON lines through
`weighted_mtp.storage.jsonl`) and checking the types of processed records' fields (a raw
row's fields are read by `weighted_mtp.assets.rows`).

Every reader is a generator, so memory holds one batch or one line whatever the file size,
and every failure names the file and line (or row group) and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weighted_mtp.assets.rows import Rejected, field, of_type
from weighted_mtp.data.template import RECORD_SCHEMA
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.regular import open_regular

PARQUET_BATCH_ROWS = 8  # CodeContests rows carry MBs of generated tests


def iter_parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file as Python dicts (nested structs become dicts), batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open_regular(path) as handle:
            parquet = pq.ParquetFile(handle)
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise WmtpError(
            f"cannot read Parquet file: {exc}", path=path, hint="download it again"
        ) from None


_SCHEMA_TYPES: dict[str, type] = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "object": dict,
    "array": list,
}


def record_field(record: dict[str, Any], key: str, path: Path, line: int) -> Any:
    """A processed record's field (`metadata.is_correct` for a nested one) of the JSON type
    `RECORD_SCHEMA` gives it; one error naming the file, line and key when it is missing or
    of another type (the string "false" is not false)."""
    value: Any = record
    schema: dict[str, Any] = RECORD_SCHEMA
    names = key.split(".")
    for depth, name in enumerate(names, start=1):
        schema = schema["properties"][name]
        value = field(value, name, path, line)  # a dict: the level above was checked
        kind = _SCHEMA_TYPES.get(schema.get("type", ""))
        if kind is None:
            continue
        try:
            of_type(value, kind, ".".join(names[:depth]))
        except Rejected as exc:
            raise WmtpError(
                f"line {line}: {exc.reason}",
                path=path,
                hint="the record does not follow the processed-record schema; prepare the "
                "dataset again (wmtp data prepare) or fix the line",
            ) from None
    return value
