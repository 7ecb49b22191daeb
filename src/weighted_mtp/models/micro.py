"""Micro models: laptop-sized copies of the two base models for local experiment runs.

micro-mtp is a Meta-format MTP model (4 blocks: head 0 plus three extra heads, dim 512,
8 heads, vocab 8000, float16); micro-ref is a Hugging Face Llama of the same size. With
`init="slice"` every tensor is the leading part of the converted base's tensor, read with
`safe_open(...).get_slice` so only the needed bytes are read, never the whole base: the
leading vocab rows, model dims and feed-forward units, the leading heads and within each
head the leading rotary pairs (pairs are interleaved in Meta's layout and half-split in
Hugging Face's, so the rows differ but the meaning is the same). Trunk blocks come from the
base's leading trunk blocks and prediction heads from the base's heads. `init="random"`
needs no base weights and is deterministic for a seed. Both share the base's tokenizer,
trimmed to the micro vocab (see `tokenizer.trim_tokenizer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from weighted_mtp import assets
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.models.architecture import Shapes
from weighted_mtp.models.formats import Architecture, Dims, MicroSize, ModelFormat, format_of
from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
from weighted_mtp.models.metadata import (
    build_metadata,
    folder_relative,
    read_metadata,
    tokenizer_entry,
    weights_entry,
    write_metadata,
)
from weighted_mtp.models.safetensors_stream import DTYPES, SafetensorsWriter, TensorSpec
from weighted_mtp.models.tokenizer import shared_with_meta, tokenizer_facts, trim_tokenizer
from weighted_mtp.storage import freshness
from weighted_mtp.storage.hashing import sha256_file, write_sha256sums
from weighted_mtp.storage.layout import Layout, ModelPaths

if TYPE_CHECKING:
    import torch

INITS = ("slice", "random")
TARGET_DEVICE = "mps"
DTYPE = "float16"
INIT_STD = 0.02


MICRO_SIZE = MicroSize()


def _head_rows(n_heads: int, base_hd: int, micro_hd: int, layout: str) -> list[int]:
    """Rows of the leading `n_heads` heads, each cut to its leading `micro_hd / 2` rotary
    pairs: rows (2i, 2i+1) in Meta's interleaved layout, rows (i, i + hd/2) in the
    half-split one; plain leading rows where there is no rotary ("plain")."""
    rows = []
    for head in range(n_heads):
        start = head * base_hd
        if layout == "half":
            half = micro_hd // 2
            rows += [start + i for i in range(half)]
            rows += [start + base_hd // 2 + i for i in range(half)]
        else:
            rows += [start + i for i in range(micro_hd)]
    return rows


def axis_selection(kind: str, base: Dims, micro: Dims, rotary: str) -> list[int] | int:
    """A leading count, or the list of indices, to keep along an axis of `kind`."""
    if kind in ("vocab", "dim", "ffn"):
        return {"vocab": micro.vocab, "dim": micro.dim, "ffn": micro.ffn}[kind]
    heads = micro.n_heads if kind.startswith("q") else micro.kv_heads
    layout = rotary if kind.endswith("+rot") else "plain"
    return _head_rows(heads, base.head_dim, micro.head_dim, layout)


def read_sliced(handle: Any, name: str, selections: list[list[int] | int]) -> torch.Tensor:
    """Read only the leading block that holds the selection, then pick the indices."""
    import torch

    extents = [s if isinstance(s, int) else max(s) + 1 for s in selections]
    block: torch.Tensor = handle.get_slice(name)[tuple(slice(0, e) for e in extents)]
    for axis, selection in enumerate(selections):
        if not isinstance(selection, int):
            block = block.index_select(axis, torch.tensor(selection))
    return block


@dataclass
class Plan:
    """What to write: the micro architecture and where each tensor comes from."""

    micro: Architecture
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    source_dtype: str


def _check_fits(base: Dims, micro: Dims, base_name: str) -> None:
    for field in ("vocab", "dim", "ffn", "n_heads", "kv_heads", "head_dim", "n_layers"):
        wanted, have = getattr(micro, field), getattr(base, field)
        if wanted > have:
            label = "vocab_size" if field == "vocab" else field
            raise WmtpError(
                f"micro {label} {wanted} is larger than {base_name}'s {have}: cannot slice",
                hint="use --init random or a smaller micro size",
            )


def _random_tensors(shapes: Shapes, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """N(0, 0.02) weights and unit norms, in a fixed order from one seeded generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, shape in shapes.items():
        if len(shape) == 1:
            yield name, torch.ones(shape, dtype=torch.float16)
        else:
            values = torch.randn(shape, generator=generator) * INIT_STD
            yield name, values.to(torch.float16)


def _sliced_tensors(
    base_paths: ModelPaths, fmt: ModelFormat, base: Architecture, micro: Architecture
) -> Iterator[tuple[str, torch.Tensor]]:
    import torch
    from safetensors import safe_open

    with safe_open(base_paths.weights, framework="pt") as handle:
        for name in micro.shapes:
            selections = [
                axis_selection(kind, base.dims, micro.dims, fmt.rotary)
                for kind in fmt.tensor_axes(name)
            ]
            source = fmt.micro_source_name(name, base.config, micro.config)
            yield name, read_sliced(handle, source, selections).to(torch.float16)


def _base_dtype(base_paths: ModelPaths) -> str:
    from safetensors import safe_open

    with safe_open(base_paths.weights, framework="pt") as handle:
        first = next(iter(handle.keys()))
        return DTYPES[handle.get_slice(first).get_dtype()][0]


def _base_architecture(base_paths: ModelPaths, fmt: ModelFormat) -> Architecture:
    """The converted base's configs, checked against its weights' header."""
    from weighted_mtp.models.adapter import require_matching_shapes, safetensors_shapes

    def vocab_from_embedding() -> int:
        embedding = safetensors_shapes(base_paths.weights).get(fmt.embedding)
        if embedding is None:
            raise WmtpError(f"missing tensor {fmt.embedding}", path=base_paths.weights)
        return embedding[0]

    base = fmt.read(base_paths, vocab_from_embedding)
    require_matching_shapes(base.shapes, base_paths.weights, base.config_files[0])
    return base


def _plan(
    fmt: ModelFormat,
    base_paths: ModelPaths,
    paths: ModelPaths,
    size: MicroSize,
    init: str,
    seed: int,
) -> Plan:
    """The micro architecture and its tensors: sliced from the base or random."""
    base = _base_architecture(base_paths, fmt) if init == "slice" else None
    config = fmt.micro_config(size, base.config if base else None, DTYPE)
    micro = fmt.architecture(config, fmt.config_files(paths))
    if base is None:
        return Plan(micro, partial(_random_tensors, micro.shapes, seed), "float32")
    fmt.check_micro_fits(base.config, micro.config, base_paths.name)
    _check_fits(base.dims, micro.dims, base_paths.name)
    tensors = partial(_sliced_tensors, base_paths, fmt, base, micro)
    return Plan(micro, tensors, _base_dtype(base_paths))


def _base_weights_sha256(base_paths: ModelPaths) -> str:
    if not base_paths.metadata.is_file():
        raise WmtpError(
            f"{base_paths.name} has weights but no metadata.json",
            path=base_paths.metadata,
            hint=f"convert it again: wmtp models convert {base_paths.name}",
        )
    return read_metadata(base_paths.metadata).weights.sha256


def build_micro(
    layout: Layout,
    name: str,
    *,
    init: str | None = None,
    seed: int = 0,
    size: MicroSize = MICRO_SIZE,
) -> dict[str, Any]:
    """Build micro-mtp or micro-ref; returns the metadata.json content.

    `init` defaults to "slice" when the base is converted, else "random". Each file is
    written atomically; the old metadata.json is removed first and the new one written
    last, so an interrupted build never looks complete.
    """
    if name not in assets.MICRO_MODELS:
        raise UsageError(
            f"{name!r} is not a micro model",
            hint=f"choose one of: {', '.join(assets.MICRO_MODELS)}",
        )
    base_name = assets.model(name).derived_from or ""
    base_paths, paths = layout.model(base_name), layout.model(name)
    init = init or ("slice" if base_paths.weights.is_file() else "random")
    if init not in INITS:
        raise UsageError(f"unknown init {init!r}", hint=f"choose one of: {', '.join(INITS)}")
    if init == "slice" and not base_paths.weights.is_file():
        raise WmtpError(
            f"{base_name} is not converted: nothing to slice",
            path=base_paths.weights,
            hint=f"run `wmtp models convert {base_name}` or use --init random",
        )
    if not base_paths.tokenizer_model.is_file():
        raise WmtpError(
            f"{name} shares {base_name}'s tokenizer, which is missing",
            path=base_paths.tokenizer_model,
            hint=f"run `wmtp models download {base_name}` first",
        )
    fmt = format_of(name)
    plan = _plan(fmt, base_paths, paths, size, init, seed)
    base_sha = _base_weights_sha256(base_paths) if init == "slice" else None

    freshness.clear(layout, name)
    paths.metadata.unlink(missing_ok=True)
    trimmed = trim_tokenizer(base_paths.tokenizer_model, paths.tokenizer_model, size.vocab_size)
    tokenizer_files = write_hf_tokenizer(paths.tokenizer_dir, paths.tokenizer_model)
    specs = [TensorSpec.of(n, DTYPE, shape) for n, shape in plan.micro.shapes.items()]
    with SafetensorsWriter(paths.weights, specs, {"format": "pt"}) as writer:
        for tensor_name, tensor in plan.tensors():
            writer.write(tensor_name, tensor)
    written = writer.written
    write_sha256sums(paths.sha256sums, {paths.weights.name: written.sha256})
    for stale in (paths.params, paths.adapter_config, paths.hf_config):
        stale.unlink(missing_ok=True)
    fmt.write_configs(paths, plan.micro.config, DTYPE)

    # The micro tokenizer is a prefix of its base's; shared means the base's is Meta's.
    shared_with, difference = shared_with_meta(layout, base_paths.tokenizer_model)
    config_files = [*fmt.config_files(paths), *tokenizer_files]
    metadata = build_metadata(
        name=name,
        format=fmt.name,
        dtype=DTYPE,
        source_dtype=plan.source_dtype,
        parameter_count=sum(math.prod(shape) for shape in plan.micro.shapes.values()),
        weights=weights_entry(paths, written.size, written.sha256),
        tokenizer=tokenizer_entry(paths, sha256_file(paths.tokenizer_model), trimmed.facts),
        source={"model": base_name, "sha256": base_sha},
        tokenizer_shared_with=shared_with,
        tokenizer_difference=difference,
        files={folder_relative(paths, p): sha256_file(p) for p in config_files},
        extra={
            "target_device": TARGET_DEVICE,
            "init": init,
            "seed": seed,
            "tokenizer_trimmed": {
                "from": base_name,
                "base_vocab_size": tokenizer_facts(base_paths.tokenizer_model).vocab_size,
                "vocab_size": trimmed.facts.vocab_size,
                "replaced": {str(i): piece for i, piece in trimmed.replaced.items()},
            },
        },
    )
    write_metadata(paths.metadata, metadata)
    return metadata
