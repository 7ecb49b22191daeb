"""Typed reading of an upstream row's fields, shared by the benchmark modules.

A raw row is a JSON object as the upstream schema writes it. A missing field means a wrong
file (one `WmtpError` naming file and line); a field of another type, a null, an empty
text or the text of a null (`"None"`) rejects the row or sample (`Rejected`, counted by
reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from weighted_mtp.errors import WmtpError

T = TypeVar("T")

# What a null becomes when something turns it into text (Python's str(None), JSON's null).
NULL_TEXTS = frozenset({"None", "null"})


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


def optional(row: dict[str, Any], key: str, kind: type[T], default: T, within: str = "") -> T:
    """`row[key]` of type `kind`, or `default` where it is absent or null."""
    value = of_type(row.get(key), kind, f"{within}{key}", optional=True)
    return default if value is None else value


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


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
