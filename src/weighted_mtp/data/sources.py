"""Reading upstream files row by row (Parquet by record batch; JSON lines through
`weighted_mtp.storage.jsonl`) and checking the types of their fields.

Every reader is a generator, so memory holds one batch or one line whatever the file size,
and every failure names the file and line (or row group) and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from weighted_mtp.data.template import NULL_TEXTS, RECORD_SCHEMA
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.regular import open_regular

T = TypeVar("T")

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


class Rejected(Exception):
    """A row or sample without the types the upstream schema gives its fields: it is
    dropped and counted under `reason` (short and value-free, so equal reasons add up)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_JSON_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES.items() if isinstance(value, kind)), "?")


@overload
def of_type(value: object, kind: type[T], label: str, *, optional: Literal[False] = False) -> T: ...
@overload
def of_type(value: object, kind: type[T], label: str, *, optional: bool) -> T | None: ...
def of_type(value: object, kind: type[T], label: str, *, optional: bool = False) -> T | None:
    """`value` if it is a `kind` (a bool is no integer), or None when `optional`; else
    Rejected naming `label`."""
    if value is None:
        if optional:
            return None
        raise Rejected(f"{label} is null")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Rejected(f"{label} is {_json_type(value)}, not {_JSON_TYPES[kind]}")
    return value


@overload
def list_of(
    value: object, kind: type[T], label: str, *, optional: Literal[False] = False
) -> list[T]: ...
@overload
def list_of(value: object, kind: type[T], label: str, *, optional: bool) -> list[T] | None: ...
def list_of(value: object, kind: type[T], label: str, *, optional: bool = False) -> list[T] | None:
    """A JSON array whose items are all `kind` (see `of_type`)."""
    items = of_type(value, list, label, optional=optional)
    if items is None:
        return None
    return [of_type(item, kind, f"an item of {label}") for item in items]


def typed(row: dict[str, Any], name: str, kind: type[T], path: Path, line: int) -> T:
    """`row[name]` checked to be a `kind`. A missing field means a wrong file (a WmtpError);
    null or another type rejects the row."""
    return of_type(field(row, name, path, line), kind, name)


def non_empty_text(value: Any, label: str) -> str:
    """A string with more than white space that is not the text of a null ("None"): neither
    is a problem statement or an answer."""
    text: str = of_type(value, str, label)
    if not text.strip():
        raise Rejected(f"{label} is empty")
    if text.strip() in NULL_TEXTS:
        raise Rejected(f"{label} is the text of a null")
    return text


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
