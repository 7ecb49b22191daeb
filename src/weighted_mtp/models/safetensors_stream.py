"""A safetensors writer that streams: header first, then tensors one (chunk) at a time.

`safetensors.torch.save_file` needs every tensor in memory at once; for a 15 GB checkpoint
on a 24 GB machine that is not possible. The format makes streaming easy: the header (names,
dtypes, shapes, byte offsets) depends only on the metadata, so it is computed and written
first, and the tensor bytes follow in header order. The output is hashed on the way
(`HashingWriter`) and written under a temporary name (`atomic_write`), so a failure leaves no
file under the final name and no second pass is needed for the SHA-256.
"""

from __future__ import annotations

import json
import math
import queue
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import atomic_write, ensure_free_space
from weighted_mtp.storage.hashing import HashingWriter

if TYPE_CHECKING:
    import torch

# safetensors dtype code -> (torch dtype name, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_CODES = {torch_name: code for code, (torch_name, _) in DTYPES.items()}
HEADER_ALIGNMENT = 8


def dtype_code(dtype: torch.dtype | str) -> str:
    """The safetensors code ("F16", "BF16", ...) of a torch dtype or its name."""
    name = str(dtype).removeprefix("torch.")
    if name in DTYPES:
        return name
    if name not in _CODES:
        raise WmtpError(f"dtype {name} cannot be stored in safetensors")
    return _CODES[name]


def torch_dtype(code_or_name: str) -> torch.dtype:
    import torch

    name = DTYPES[code_or_name][0] if code_or_name in DTYPES else code_or_name
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise WmtpError(f"unknown dtype {code_or_name!r}")
    return dtype


@dataclass(frozen=True)
class TensorSpec:
    """What the header says about one tensor; known before its bytes are produced."""

    name: str
    dtype: str  # safetensors code, e.g. "F16"
    shape: tuple[int, ...]

    @classmethod
    def of(cls, name: str, dtype: torch.dtype | str, shape: Sequence[int]) -> TensorSpec:
        return cls(name, dtype_code(dtype), tuple(int(d) for d in shape))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str


def build_header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length prefix plus the JSON header, padded with spaces to 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise WmtpError(f"safetensors metadata must map strings to strings (key {bad[0]!r})")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for spec in specs:
        if spec.name in header:
            raise WmtpError(f"tensor name {spec.name!r} appears twice")
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-(len(text)) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (no copy if it is already contiguous)."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]  # numpy buffer


class _Writable(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class _BackgroundFile:
    """A write-only file whose writes happen on a thread, so the caller can cast and check the
    next chunk while this one is hashed and written (file writes, hashlib and torch all release
    the GIL). The queue is bounded: at most `depth` chunks wait, so memory stays a few chunks
    whatever the size."""

    def __init__(self, handle: _Writable, depth: int = 3) -> None:
        self._handle = handle
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="safetensors-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._handle.write(chunk)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def write(self, chunk: bytes | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)
        return len(chunk)

    def close(self) -> None:
        """Wait for every queued chunk; raise the writing thread's error, if any."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in the order of `specs`.

    `write(name, data)` appends `data` (a tensor of the spec's dtype; a whole tensor or the
    next chunk of its row-major elements) to tensor `name`. Every tensor must be complete
    before the next one starts and before the writer closes; otherwise nothing is kept.
    """

    def __init__(
        self,
        path: str | Path,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.specs = list(specs)
        self._header = build_header(self.specs, metadata)
        self.size = len(self._header) + sum(spec.nbytes for spec in self.specs)
        self._index = 0
        self._filled = 0
        self._file: AbstractContextManager[IO[Any]] | None = None
        self._out: HashingWriter | None = None
        self._sink: _BackgroundFile | None = None
        self.result: WrittenFile | None = None

    def __enter__(self) -> SafetensorsWriter:
        ensure_free_space(self.path.parent, self.size, f"writing {self.path.name}")
        self._file = atomic_write(self.path, "wb")
        self._out = HashingWriter(self._file.__enter__())
        self._sink = _BackgroundFile(self._out)
        self._sink.write(self._header)
        return self

    @property
    def written(self) -> WrittenFile:
        """The complete file's size and hash; only after the `with` block ended cleanly."""
        if self.result is None:
            raise RuntimeError(f"{self.path} is not completely written")
        return self.result

    def _opened(self) -> tuple[AbstractContextManager[IO[Any]], HashingWriter, _BackgroundFile]:
        if self._file is None or self._out is None or self._sink is None:
            raise RuntimeError("SafetensorsWriter used outside its `with` block")
        return self._file, self._out, self._sink

    def write(self, name: str, data: torch.Tensor) -> None:
        spec = self._current(name)
        if dtype_code(data.dtype) != spec.dtype:
            raise WmtpError(
                f"tensor {name} is {str(data.dtype).removeprefix('torch.')}, "
                f"the header says {spec.dtype}"
            )
        chunk = tensor_bytes(data)
        if self._filled + len(chunk) > spec.nbytes:
            raise WmtpError(f"tensor {name} got more data than its shape {list(spec.shape)} holds")
        self._opened()[2].write(chunk)
        self._filled += len(chunk)

    def _current(self, name: str) -> TensorSpec:
        """Move past finished tensors to `name`; an unfinished one may not be left."""
        specs = self.specs
        while (
            self._index < len(specs)
            and specs[self._index].name != name
            and self._filled == specs[self._index].nbytes
        ):
            self._index += 1
            self._filled = 0
        if self._index >= len(specs) or specs[self._index].name != name:
            expected = specs[self._index].name if self._index < len(specs) else "nothing"
            raise WmtpError(f"tensor {name} written out of order (expected {expected})")
        return specs[self._index]

    def _first_incomplete(self) -> str | None:
        for i in range(self._index, len(self.specs)):
            filled = self._filled if i == self._index else 0
            if filled != self.specs[i].nbytes:
                return self.specs[i].name
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        file, out, sink = self._opened()
        try:
            sink.close()
        except BaseException as sink_error:
            exc = exc or sink_error
        if exc is None and (missing := self._first_incomplete()) is not None:
            exc = WmtpError(f"tensor {missing} was not fully written", path=self.path)
        if exc is not None:
            file.__exit__(type(exc), exc, exc.__traceback__)
            raise exc
        file.__exit__(None, None, None)
        self.result = WrittenFile(self.path, out.bytes_written, out.hexdigest())
        return False


def write_safetensors(
    path: str | Path,
    specs: Sequence[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> WrittenFile:
    """Write `(name, tensor-or-chunk)` pairs, in `specs` order, as one safetensors file."""
    with SafetensorsWriter(path, specs, metadata) as writer:
        for name, data in tensors:
            writer.write(name, data)
    return writer.written


def save_tensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> WrittenFile:
    """Write a dict of (small) tensors; for big ones, stream with `SafetensorsWriter`."""
    specs = [TensorSpec.of(name, t.dtype, t.shape) for name, t in tensors.items()]
    return write_safetensors(path, specs, tensors.items(), metadata)
