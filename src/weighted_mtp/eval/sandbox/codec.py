"""The wire format between a sample and its judge (`judge`): frames and values.

Messages are length-prefixed JSON, at most `FRAME_LIMIT` bytes; anything malformed is a
`ProtocolError`. Values cross as tagged JSON:

- None, bool, int, float, str, bytes, bytearray, complex, and the containers list, tuple,
  set, frozenset, dict, plus the standard library's Counter, OrderedDict, deque, Fraction,
  Decimal, range, date, time, datetime, timedelta (subclasses cross as their base type;
  numpy scalars as the Python number they hold), rebuilt on the other side as those exact
  types, so the judge compares them with the built-in `==`;
- a standard-library module, or a class of the built-ins or the standard library (`int`,
  `Counter`), as its name (the other side uses its own); the tests may also pass the
  sample such functions (`len`, `math.sqrt`) by name;
- anything else stays where it is and crosses as a handle: the judge can call it, read and
  set attributes and items, iterate it and ask its length, truth and repr, but a handle is
  equal only to itself, so an object with a rigged `__eq__` never decides a comparison.

Standard library only: the sandbox worker's processes import this.
"""

from __future__ import annotations

import collections
import importlib
import json
import socket
import struct
import sys
import types
from base64 import b64decode, b64encode
from collections.abc import Callable
from typing import Any

FRAME_LIMIT = 16 << 20  # bytes in one message
DEPTH_LIMIT = 200  # nesting of one value
INT_BITS_AS_NUMBER = 12_000  # larger ints cross as hex (decimal text is capped at 4300 digits)
HEADER = struct.Struct(">I")

Json = Any  # what json.dumps accepts / json.loads returns


class ChannelClosed(Exception):
    """The other side closed the channel (or died)."""


class ProtocolError(Exception):
    """The other side sent something that is not a valid message or value."""


# --- framing ------------------------------------------------------------------------------


def dumps(message: Json) -> str:
    """`message` as the compact JSON text of a frame."""
    return json.dumps(message, separators=(",", ":"))


def send_frame(sock: socket.socket, message: Json) -> None:
    send_text(sock, dumps(message))


def send_text(sock: socket.socket, text: str) -> None:
    """A frame whose JSON text is `text` (made by `dumps`, or joined from its pieces)."""
    data = text.encode()
    if len(data) > FRAME_LIMIT:
        raise ProtocolError(f"message of {len(data)} bytes is over {FRAME_LIMIT}")
    sock.sendall(HEADER.pack(len(data)) + data)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ChannelClosed("the other side closed the channel")
        chunks += chunk
    return bytes(chunks)


def receive_frame(sock: socket.socket) -> Json:
    try:
        (size,) = HEADER.unpack(_receive_exactly(sock, HEADER.size))
        if size > FRAME_LIMIT:
            raise ProtocolError(f"a message of {size} bytes is over the {FRAME_LIMIT} limit")
        return json.loads(_receive_exactly(sock, size))
    except OSError as exc:
        raise ChannelClosed(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed message ({type(exc).__name__})") from None


# --- values -------------------------------------------------------------------------------


def stdlib_module_name(value: object) -> str | None:
    name = value.__name__ if isinstance(value, types.ModuleType) else None
    if isinstance(name, str) and name.partition(".")[0] in sys.stdlib_module_names:
        return name
    return None


def _numpy_scalar(value: object) -> object | None:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        item = value.item()
        return item if not isinstance(item, numpy.generic) else None
    return None


_SCALARS = (str, float, bool, type(None))  # exact types JSON carries as they are
_FLAT = (list, tuple, set, frozenset)


def _flat(value: Any) -> list[Any] | None:
    """The items of a list, tuple, set or frozenset (exact types) that holds only exact
    str, float, bool, None and ints JSON carries as numbers, which cross as they are (the
    common case, encoded without a call per item); None for anything else."""
    items = list(value)
    for item in items:
        kind = type(item)
        if kind is int:
            if item.bit_length() > INT_BITS_AS_NUMBER:
                return None
        elif kind not in _SCALARS:
            return None
    return items


def encode(value: object, export: Callable[[object], Json], depth: int = 0) -> Json:
    """`value` as tagged JSON; `export` gives the JSON of anything that is not plain data
    (a handle) or raises TypeError."""
    if depth > DEPTH_LIMIT:
        raise ValueError(f"value nested deeper than {DEPTH_LIMIT}")
    down = depth + 1
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        number = int.__index__(value)
        if number.bit_length() <= INT_BITS_AS_NUMBER:
            return number
        return ["int", hex(number)]
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        tag = "bytearray" if isinstance(value, bytearray) else "bytes"
        return [tag, b64encode(bytes(value)).decode()]
    if isinstance(value, complex):
        return ["complex", value.real, value.imag]
    if type(value) in _FLAT:
        flat = _flat(value)
        if flat is not None:
            return [type(value).__name__, flat]
    if isinstance(value, (list, tuple, set, frozenset, collections.deque)):
        items = [encode(item, export, down) for item in value]
        if isinstance(value, collections.deque):
            return ["deque", items, value.maxlen]
        for kind in (list, tuple, frozenset, set):
            if isinstance(value, kind):
                return [kind.__name__, items]
    if isinstance(value, dict):
        pairs = [[encode(k, export, down), encode(v, export, down)] for k, v in value.items()]
        if isinstance(value, collections.Counter):
            return ["Counter", pairs]
        if isinstance(value, collections.OrderedDict):
            return ["OrderedDict", pairs]
        return ["dict", pairs]
    return _encode_other(value, export, down)


def _instance_of(value: object, module: str, name: str) -> bool:
    """isinstance(value, module.name), without importing the module: a value of a type
    whose module was never imported is not of that type."""
    kind = getattr(sys.modules.get(module), name, None)
    return isinstance(kind, type) and isinstance(value, kind)


def _encode_other(value: object, export: Callable[[object], Json], down: int) -> Json:
    if isinstance(value, range):
        return ["range", value.start, value.stop, value.step]
    if _instance_of(value, "fractions", "Fraction"):
        numerator, denominator = value.numerator, value.denominator  # type: ignore[attr-defined]
        return ["Fraction", encode(numerator, export, down), encode(denominator, export, down)]
    if _instance_of(value, "decimal", "Decimal"):
        return ["Decimal", str(value)]
    if _instance_of(value, "datetime", "timedelta"):
        return ["timedelta", value.days, value.seconds, value.microseconds]  # type: ignore[attr-defined]
    if getattr(value, "tzinfo", None) is None:
        for name in ("datetime", "date", "time"):  # datetime before its base class date
            if _instance_of(value, "datetime", name):
                return [name, value.isoformat()]  # type: ignore[attr-defined]
    scalar = _numpy_scalar(value)
    if scalar is not None:
        return encode(scalar, export, down)
    return export(value)


def _is_standard(module: object) -> bool:
    return isinstance(module, str) and (
        module == "builtins" or module.partition(".")[0] in sys.stdlib_module_names
    )


def _by_name(module: str, qualname: str) -> object:
    """The object `module.qualname` of the built-ins or the standard library."""
    if not _is_standard(module) or "<" in qualname:
        raise ProtocolError(f"{module}.{qualname} is not a standard-library name")
    found: object = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def by_name(payload: list[Json]) -> object:
    module, qualname = payload
    try:
        return _by_name(as_str(module), as_str(qualname))
    except (ImportError, AttributeError):
        raise ProtocolError(f"no {module}.{qualname}") from None


def standard_name(value: object) -> list[str] | None:
    """[module, qualname] of a class or function of the built-ins or the standard library
    (e.g. `int`, `math.sqrt`), which cross as their names; None for anything else."""
    if not isinstance(value, (type, types.BuiltinFunctionType, types.FunctionType)):
        return None
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not _is_standard(module) or not isinstance(qualname, str):
        return None
    try:
        same = _by_name(str(module), qualname) is value
    except (ProtocolError, ImportError, AttributeError):
        return None
    return [str(module), qualname] if same else None


_JSON_SCALARS = (str, int, float, bool, type(None))  # what json.loads makes of a number or text
_SEQUENCES: dict[str, Callable[[list[Any]], Any]] = {
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
}
_MAPPINGS: dict[str, Callable[[list[tuple[Any, Any]]], Any]] = {
    "dict": dict,
    "Counter": lambda pairs: collections.Counter(dict(pairs)),
    "OrderedDict": collections.OrderedDict,
}


def decode(data: Json, resolve: Callable[[str, list[Json]], object], depth: int = 0) -> Any:
    """Rebuild a value from `encode`'s JSON; `resolve(tag, payload)` rebuilds handles and
    modules. Anything malformed raises ProtocolError."""
    if depth > DEPTH_LIMIT:
        raise ProtocolError(f"value nested deeper than {DEPTH_LIMIT}")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise ProtocolError("a value that is neither plain nor tagged")
    tag, payload = data[0], data[1:]
    try:
        return _decode_tagged(tag, payload, resolve, depth + 1)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, IndexError, ArithmeticError) as exc:
        raise ProtocolError(f"bad {tag!r} value ({type(exc).__name__})") from None


def _decode_tagged(
    tag: str, payload: list[Json], resolve: Callable[[str, list[Json]], object], down: int
) -> Any:
    def item(x: Json) -> Any:
        return decode(x, resolve, down)

    if tag in _SEQUENCES:
        (items,) = payload
        plain = as_list(items)
        if all(type(x) in _JSON_SCALARS for x in plain):  # nothing to rebuild
            return _SEQUENCES[tag](plain)
        return _SEQUENCES[tag]([item(x) for x in plain])
    if tag in _MAPPINGS:
        (pairs,) = payload
        return _MAPPINGS[tag]([(item(k), item(v)) for k, v in as_list(pairs)])
    if tag == "deque":
        items, maxlen = payload
        if maxlen is not None and not isinstance(maxlen, int):
            raise TypeError("maxlen")
        return collections.deque([item(x) for x in as_list(items)], maxlen)
    if tag in ("bytes", "bytearray"):
        (text,) = payload
        raw = b64decode(as_str(text), validate=True)
        return bytearray(raw) if tag == "bytearray" else raw
    return _decode_scalar(tag, payload, resolve, item)


def _decode_scalar(
    tag: str,
    payload: list[Json],
    resolve: Callable[[str, list[Json]], object],
    item: Callable[[Json], Any],
) -> Any:
    if tag == "int":
        (text,) = payload
        return int(as_str(text), 16)
    if tag == "complex":
        real, imag = payload
        return complex(_as_number(real), _as_number(imag))
    if tag == "Fraction":
        import fractions

        numerator, denominator = (item(x) for x in payload)
        return fractions.Fraction(_as_int(numerator), _as_int(denominator))
    if tag == "Decimal":
        import decimal

        (text,) = payload
        return decimal.Decimal(as_str(text))
    if tag == "range":
        start, stop, step = (_as_int(x) for x in payload)
        return range(start, stop, step)
    if tag in ("timedelta", "datetime", "date", "time"):
        import datetime

        if tag == "timedelta":
            days, seconds, micro = (_as_int(x) for x in payload)
            return datetime.timedelta(days, seconds, micro)
        (text,) = payload
        kind: type[datetime.date | datetime.time] = getattr(datetime, tag)
        return kind.fromisoformat(as_str(text))
    if tag in ("ref", "module", "named"):
        return resolve(tag, payload)
    raise ProtocolError(f"unknown value tag {tag!r}")


def as_list(value: Json) -> list[Json]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def as_str(value: Json) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _as_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _as_number(value: Json) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected a number")
    return float(value)
