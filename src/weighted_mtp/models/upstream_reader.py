"""Reading upstream checkpoints safely and lazily.

PyTorch files are opened with `torch.load(weights_only=True, mmap=True)`: the pickle may
only rebuild tensors (a pickle that would call anything else is refused) and tensor bytes
stay in the file, paged in when read. Safetensors shards are read through `safe_open`. A
`TensorSource` then hands out each tensor in row chunks, so a converter's memory stays at
one chunk whatever the model size.

Sharded Hugging Face checkpoints are checked before use: every tensor in exactly one
existing shard inside the folder, and the index listing exactly the shards' tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.safetensors_stream import torch_dtype
from weighted_mtp.storage.atomic import read_json
from weighted_mtp.storage.layout import safe_relative

if TYPE_CHECKING:
    import torch

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
CHUNK_ELEMENTS = 8 << 20
HF_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


def _refuse_pickle(path: Path, exc: Exception) -> WmtpError:
    blocked = re.search(r"GLOBAL (\S+)", str(exc))
    what = f" ({blocked.group(1)})" if blocked else ""
    return WmtpError(
        f"refusing to load: the checkpoint's pickle would run code{what}, not just rebuild tensors",
        path=path,
        hint="download the file again from the official repo; never load it with "
        "weights_only=False",
    )


def load_torch_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat `{name: tensor}` from a PyTorch zip checkpoint, memory-mapped, never trusted."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WmtpError(
            "checkpoint file not found", path=path, hint="run `wmtp models download` first"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic.startswith(PICKLE_MAGIC):
        raise WmtpError(
            "legacy (non-zip) PyTorch file: it cannot be memory-mapped, so converting it "
            "would need the whole model in RAM",
            path=path,
            hint="download it again, or re-save it with a current torch.save",
        )
    if magic != ZIP_MAGIC:
        raise WmtpError(
            "not a PyTorch checkpoint (no zip header)",
            path=path,
            hint="the download may be incomplete or corrupted: download it again",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise _refuse_pickle(path, exc) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).split(".")[0]
        raise WmtpError(
            f"checkpoint is truncated or corrupted ({first})",
            path=path,
            hint="download it again (`wmtp models download` resumes)",
        ) from None
    return _flat_state(state, path)


def _flat_state(state: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(state, dict):
        raise WmtpError(f"checkpoint holds a {type(state).__name__}, not a state dict", path=path)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise WmtpError(
                f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor",
                path=path,
                hint="expected a flat state dict as saved by model.state_dict()",
            )
    return state


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path


class TensorSource:
    """The tensors of a checkpoint (one file or many shards), read lazily in chunks."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._tensors: dict[str, torch.Tensor] = {}  # mmapped PyTorch tensors
        self._slices: dict[str, Any] = {}  # safetensors slices
        self.info: dict[str, TensorInfo] = {}

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tensors.clear()
        self._slices.clear()
        self._stack.close()

    @property
    def files(self) -> list[Path]:
        return sorted({info.file for info in self.info.values()})

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.info.items()}

    def add_file(self, path: Path) -> list[str]:
        """Open a `.safetensors` or PyTorch file; returns the names it holds."""
        if path.suffix == ".safetensors":
            return self._add_safetensors(path)
        return self._add_torch(path)

    def _claim(self, name: str, info: TensorInfo) -> None:
        if name in self.info:
            raise WmtpError(
                f"tensor {name} is in two files ({self.info[name].file.name} and {info.file.name})",
                path=info.file.parent,
            )
        self.info[name] = info

    def _add_torch(self, path: Path) -> list[str]:
        state = load_torch_state(path)
        for name, tensor in state.items():
            self._claim(name, TensorInfo(tensor.dtype, tuple(tensor.shape), path))
            self._tensors[name] = tensor
        return list(state)

    def _add_safetensors(self, path: Path) -> list[str]:
        from safetensors import safe_open

        try:
            handle = self._stack.enter_context(safe_open(path, framework="pt"))
            names = list(handle.keys())
            slices = {name: handle.get_slice(name) for name in names}
        except Exception as exc:  # safetensors raises its own untyped errors
            raise WmtpError(f"not a readable safetensors file ({exc})", path=path) from None
        for name, piece in slices.items():
            info = TensorInfo(torch_dtype(piece.get_dtype()), tuple(piece.get_shape()), path)
            self._claim(name, info)
            self._slices[name] = piece
        return names

    def tensor(self, name: str) -> torch.Tensor:
        """The whole tensor (for small ones, e.g. rotary buffers)."""
        return next(self.chunks(name, max_elements=None)).reshape(self.info[name].shape)

    def chunks(
        self, name: str, max_elements: int | None = CHUNK_ELEMENTS
    ) -> Iterator[torch.Tensor]:
        """The tensor's elements in row-major order, as 1-D pieces of whole rows."""
        shape = self.info[name].shape
        rows = shape[0] if shape else 1
        row_elements = math.prod(shape[1:]) if shape else 1
        step = rows if max_elements is None else max(1, max_elements // max(row_elements, 1))
        if name in self._tensors:
            tensor = self._tensors[name]
            tensor = tensor.reshape(1) if not shape else tensor
            for start in range(0, max(rows, 1), step):
                yield tensor[start : start + step].contiguous().reshape(-1)
            return
        piece = self._slices[name]
        if not shape:
            yield piece[...].reshape(-1)
            return
        for start in range(0, max(rows, 1), step):
            yield piece[start : start + step].contiguous().reshape(-1)


def _index_file(folder: Path) -> Path | None:
    found = [folder / name for name in HF_INDEX_NAMES if (folder / name).is_file()]
    return found[0] if found else None


def read_shard_index(index_path: Path) -> dict[str, Path]:
    """`{tensor: shard path}` from an index, with every shard inside the folder and present."""
    index = read_json(index_path, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WmtpError("shard index has no weight_map", path=index_path)
    folder = index_path.parent
    resolved: dict[str, Path] = {}
    shard_paths: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise WmtpError(
                f"shard index maps {name} to {shard!r}, not a file name", path=index_path
            )
        if shard not in shard_paths:
            shard_paths[shard] = _shard_path(folder, shard, index_path)
        resolved[name] = shard_paths[shard]
    return resolved


def _shard_path(folder: Path, shard: str, index_path: Path) -> Path:
    try:
        path = folder / safe_relative(shard)
    except WmtpError:
        raise WmtpError(
            f"shard index names {shard!r}, a path outside the checkpoint folder",
            path=index_path,
            hint="the index may be malicious; download it again",
        ) from None
    if not path.resolve().is_relative_to(folder.resolve()):
        raise WmtpError(f"shard {shard!r} links outside the checkpoint folder", path=index_path)
    if not path.is_file():
        raise WmtpError(
            f"shard {shard} named by the index is missing",
            path=path,
            hint="download the model again (`wmtp models download` resumes)",
        )
    return path


def open_hf_checkpoint(folder: str | Path) -> TensorSource:
    """A Hugging Face checkpoint folder: sharded with an index, or one file."""
    folder = Path(folder)
    index_path = _index_file(folder)
    if index_path is None:
        singles = [folder / n for n in HF_SINGLE_NAMES if (folder / n).is_file()]
        if not singles:
            raise WmtpError(
                "no checkpoint found (no shard index, no single weights file)",
                path=folder,
                hint="run `wmtp models download` first",
            )
        return open_files(singles[:1])
    placement = read_shard_index(index_path)
    source = open_files(sorted(set(placement.values())))
    try:
        _check_index_matches(source, placement, index_path)
    except BaseException:
        source.close()
        raise
    return source


def open_files(files: list[Path]) -> TensorSource:
    """Checkpoint files (PyTorch or safetensors) as one source; a name in two is an error."""
    source = TensorSource()
    try:
        for path in files:
            source.add_file(path)
    except BaseException:
        source.close()
        raise
    return source


def _check_index_matches(
    source: TensorSource, placement: dict[str, Path], index_path: Path
) -> None:
    for name, info in source.info.items():
        if name not in placement:
            raise WmtpError(
                f"shard {info.file.name} holds tensor {name}, which the index does not list",
                path=index_path,
                hint="the index and shards come from different versions",
            )
        if placement[name] != info.file:
            raise WmtpError(
                f"index puts tensor {name} in {placement[name].name}, but it is "
                f"in {info.file.name}",
                path=index_path,
            )
    for name, shard in placement.items():
        if name not in source.info:
            raise WmtpError(
                f"index lists tensor {name} in {shard.name}, which lacks it",
                path=index_path,
                hint="the shard may be incomplete: download the model again",
            )
