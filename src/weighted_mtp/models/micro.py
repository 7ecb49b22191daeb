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
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.models.architecture import (
    MetaParams,
    Shapes,
    hf_llama_tensor_shapes,
    meta_tensor_shapes,
)
from weighted_mtp.storage.atomic import read_json, write_json
from weighted_mtp.storage.layout import (
    META_MODEL,
    MICRO_MTP,
    MICRO_REF,
    REFERENCE_MODEL,
    Layout,
    ModelPaths,
)

if TYPE_CHECKING:
    import torch

MICRO_BASES = {MICRO_MTP: META_MODEL, MICRO_REF: REFERENCE_MODEL}
INITS = ("slice", "random")
TARGET_DEVICE = "mps"
DTYPE = "float16"
INIT_STD = 0.02
FFN_MULTIPLE = 256


@dataclass(frozen=True)
class MicroSize:
    dim: int = 512
    n_layers: int = 4
    n_heads: int = 8
    vocab_size: int = 8000
    n_future_tokens: int = 4


MICRO_SIZE = MicroSize()


@dataclass(frozen=True)
class Dims:
    """The sizes slicing works on, in either format."""

    vocab: int
    dim: int
    ffn: int
    n_heads: int
    kv_heads: int
    head_dim: int
    n_layers: int

    @classmethod
    def of_meta(cls, p: MetaParams) -> Dims:
        return cls(
            p.vocab_size, p.dim, p.intermediate_size, p.n_heads, p.kv_heads, p.head_dim, p.n_layers
        )

    @classmethod
    def of_hf(cls, c: dict[str, Any]) -> Dims:
        n_heads = c["num_attention_heads"]
        return cls(
            c["vocab_size"],
            c["hidden_size"],
            c["intermediate_size"],
            n_heads,
            c.get("num_key_value_heads") or n_heads,
            c.get("head_dim") or c["hidden_size"] // n_heads,
            c["num_hidden_layers"],
        )


# Axis kinds of each tensor, by name suffix: what each dimension of the weight indexes.
# "q"/"kv" are rows (or columns) grouped by head; "+rot" marks rotary pairs inside a head.
_META_AXES = {
    "tok_embeddings.weight": ("vocab", "dim"),
    "output.weight": ("vocab", "dim"),
    "attention.wq.weight": ("q+rot", "dim"),
    "attention.wk.weight": ("kv+rot", "dim"),
    "attention.wv.weight": ("kv", "dim"),
    "attention.wo.weight": ("dim", "q"),
    "feed_forward.w1.weight": ("ffn", "dim"),
    "feed_forward.w3.weight": ("ffn", "dim"),
    "feed_forward.w2.weight": ("dim", "ffn"),
    "norm.weight": ("dim",),
}
_HF_AXES = {
    "embed_tokens.weight": ("vocab", "dim"),
    "lm_head.weight": ("vocab", "dim"),
    "q_proj.weight": ("q+rot", "dim"),
    "k_proj.weight": ("kv+rot", "dim"),
    "v_proj.weight": ("kv", "dim"),
    "o_proj.weight": ("dim", "q"),
    "gate_proj.weight": ("ffn", "dim"),
    "up_proj.weight": ("ffn", "dim"),
    "down_proj.weight": ("dim", "ffn"),
    "layernorm.weight": ("dim",),
    "norm.weight": ("dim",),
}


def tensor_axes(name: str, fmt: str) -> tuple[str, ...]:
    table = _META_AXES if fmt == "meta-mtp" else _HF_AXES
    for suffix, axes in table.items():
        if name.endswith(suffix):
            return axes
    raise WmtpError(f"tensor {name} has no slicing rule")


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
        return getattr(micro, kind)
    heads = micro.n_heads if kind.startswith("q") else micro.kv_heads
    layout = rotary if kind.endswith("+rot") else "plain"
    return _head_rows(heads, base.head_dim, micro.head_dim, layout)


def read_sliced(handle: Any, name: str, selections: list[list[int] | int]) -> torch.Tensor:
    """Read only the leading block that holds the selection, then pick the indices."""
    import torch

    extents = [s if isinstance(s, int) else max(s) + 1 for s in selections]
    block = handle.get_slice(name)[tuple(slice(0, e) for e in extents)]
    for axis, selection in enumerate(selections):
        if not isinstance(selection, int):
            block = block.index_select(axis, torch.tensor(selection))
    return block


def meta_source_name(name: str, base: MetaParams, micro: MetaParams) -> str:
    """Trunk blocks map to the base's leading trunk blocks, head 0 to head 0."""
    if name.startswith(f"layers.{micro.n_trunk_layers}."):
        return name.replace(f"layers.{micro.n_trunk_layers}.", f"layers.{base.n_trunk_layers}.", 1)
    return name


def micro_meta_params(size: MicroSize, base: MetaParams | None) -> MetaParams:
    """Meta params of micro-mtp: the micro size, the base's other settings."""
    template = base or MetaParams(
        dim=size.dim, n_layers=size.n_layers, n_heads=size.n_heads, vocab_size=size.vocab_size
    )
    kv_heads = None
    if template.n_kv_heads is not None and template.kv_heads != template.n_heads:
        kv_heads = max(1, size.n_heads * template.kv_heads // template.n_heads)
    return replace(
        template,
        dim=size.dim,
        n_layers=size.n_layers,
        n_heads=size.n_heads,
        n_kv_heads=kv_heads,
        vocab_size=size.vocab_size,
        n_future_tokens=size.n_future_tokens,
    )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def micro_hf_config(size: MicroSize, base: dict[str, Any] | None) -> dict[str, Any]:
    """config.json of micro-ref: the base's config at the micro size, keeping its ratio of
    feed-forward to model width (Llama's rule without a base)."""
    from weighted_mtp.models.export_hf import hf_llama_config

    if base is None:
        params = micro_meta_params(size, None)
        return hf_llama_config(params, n_layers=size.n_layers, dtype=DTYPE)
    dims = Dims.of_hf(base)
    ffn = _round_up(size.dim * dims.ffn // dims.dim, FFN_MULTIPLE)
    kv_heads = max(1, size.n_heads * dims.kv_heads // dims.n_heads)
    config = {k: v for k, v in base.items() if k != "transformers_version"}
    config.update(
        {
            "hidden_size": size.dim,
            "intermediate_size": min(ffn, dims.ffn),
            "num_hidden_layers": size.n_layers,
            "num_attention_heads": size.n_heads,
            "num_key_value_heads": kv_heads,
            "head_dim": size.dim // size.n_heads,
            "vocab_size": size.vocab_size,
            "torch_dtype": DTYPE,
        }
    )
    return config


@dataclass
class Plan:
    """What to write: the micro tensor shapes, where each comes from, and the configs."""

    format: str
    shapes: Shapes
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    write_configs: Callable[[ModelPaths], None]
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
    base_paths: ModelPaths,
    shapes: Shapes,
    fmt: str,
    base: Dims,
    micro: Dims,
    source_name: Callable[[str], str],
) -> Iterator[tuple[str, torch.Tensor]]:
    import torch
    from safetensors import safe_open

    rotary = "interleaved" if fmt == "meta-mtp" else "half"
    with safe_open(base_paths.weights, framework="pt") as handle:
        for name in shapes:
            selections = [axis_selection(k, base, micro, rotary) for k in tensor_axes(name, fmt)]
            yield name, read_sliced(handle, source_name(name), selections).to(torch.float16)


def _base_dtype(base_paths: ModelPaths) -> str:
    from safetensors import safe_open

    from weighted_mtp.models.safetensors_stream import DTYPES

    with safe_open(base_paths.weights, framework="pt") as handle:
        first = next(iter(handle.keys()))
        return DTYPES[handle.get_slice(first).get_dtype()][0]


def _mtp_plan(layout: Layout, size: MicroSize, init: str, seed: int) -> Plan:
    from weighted_mtp.models.adapter import read_mtp_params, require_matching_shapes
    from weighted_mtp.models.metadata import write_meta_configs

    base_paths = layout.model(META_MODEL)
    base = None
    if init == "slice":
        base = read_mtp_params(base_paths)
        require_matching_shapes(meta_tensor_shapes(base), base_paths.weights, base_paths.params)
    micro = micro_meta_params(size, base)
    shapes = meta_tensor_shapes(micro)
    if base is None:
        tensors = partial(_random_tensors, shapes, seed)
        source_dtype = "float32"
    else:
        if micro.n_trunk_layers > base.n_trunk_layers or micro.n_extra_heads > base.n_extra_heads:
            raise WmtpError(f"{META_MODEL} has too few blocks or heads for the micro model")
        dims_base, dims_micro = Dims.of_meta(base), Dims.of_meta(micro)
        _check_fits(dims_base, dims_micro, META_MODEL)
        tensors = partial(
            _sliced_tensors,
            base_paths,
            shapes,
            "meta-mtp",
            dims_base,
            dims_micro,
            partial(meta_source_name, base=base, micro=micro),
        )
        source_dtype = _base_dtype(base_paths)
    return Plan(
        "meta-mtp",
        shapes,
        tensors,
        lambda paths: write_meta_configs(paths, micro, DTYPE),
        source_dtype,
    )


def _ref_plan(layout: Layout, size: MicroSize, init: str, seed: int) -> Plan:
    from weighted_mtp.models.adapter import require_matching_shapes

    base_paths = layout.model(REFERENCE_MODEL)
    base_config = None
    if init == "slice":
        base_config = read_json(base_paths.hf_config, "config.json")
        require_matching_shapes(
            hf_llama_tensor_shapes(base_config), base_paths.weights, base_paths.hf_config
        )
    config = micro_hf_config(size, base_config)
    shapes = hf_llama_tensor_shapes(config)
    if base_config is None:
        tensors = partial(_random_tensors, shapes, seed)
        source_dtype = "float32"
    else:
        dims_base, dims_micro = Dims.of_hf(base_config), Dims.of_hf(config)
        _check_fits(dims_base, dims_micro, REFERENCE_MODEL)
        tensors = partial(
            _sliced_tensors, base_paths, shapes, "hf-llama", dims_base, dims_micro, str
        )
        source_dtype = _base_dtype(base_paths)
    return Plan(
        "hf-llama", shapes, tensors, lambda paths: write_json(paths.hf_config, config), source_dtype
    )


def _base_weights_sha256(base_paths: ModelPaths) -> str:
    from weighted_mtp.models.metadata import read_metadata

    if not base_paths.metadata.is_file():
        raise WmtpError(
            f"{base_paths.name} has weights but no metadata.json",
            path=base_paths.metadata,
            hint=f"convert it again: wmtp models convert {base_paths.name}",
        )
    return read_metadata(base_paths.metadata)["weights"]["sha256"]


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
    from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
    from weighted_mtp.models.metadata import (
        build_metadata,
        folder_relative,
        tokenizer_entry,
        weights_entry,
        write_metadata,
    )
    from weighted_mtp.models.safetensors_stream import SafetensorsWriter, TensorSpec
    from weighted_mtp.models.tokenizer import shared_with_meta, trim_tokenizer
    from weighted_mtp.storage.hashing import sha256_file, write_sha256sums
    from weighted_mtp.storage.stamps import clear_verified

    if name not in MICRO_BASES:
        raise UsageError(
            f"{name!r} is not a micro model", hint=f"choose one of: {', '.join(MICRO_BASES)}"
        )
    base_name = MICRO_BASES[name]
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
    plan = (_mtp_plan if name == MICRO_MTP else _ref_plan)(layout, size, init, seed)
    base_sha = _base_weights_sha256(base_paths) if init == "slice" else None

    clear_verified(layout, paths.root)
    paths.metadata.unlink(missing_ok=True)
    trimmed = trim_tokenizer(base_paths.tokenizer_model, paths.tokenizer_model, size.vocab_size)
    tokenizer_files = write_hf_tokenizer(paths.tokenizer_dir, paths.tokenizer_model)
    specs = [TensorSpec.of(n, DTYPE, shape) for n, shape in plan.shapes.items()]
    with SafetensorsWriter(paths.weights, specs, {"format": "pt"}) as writer:
        for tensor_name, tensor in plan.tensors():
            writer.write(tensor_name, tensor)
    written = writer.result
    write_sha256sums(paths.sha256sums, {paths.weights.name: written.sha256})
    for stale in (paths.params, paths.adapter_config, paths.hf_config):
        stale.unlink(missing_ok=True)
    plan.write_configs(paths)

    # The micro tokenizer is a prefix of its base's; shared means the base's is Meta's.
    shared_with, difference = shared_with_meta(layout, base_paths.tokenizer_model)
    config_files = [
        p
        for p in (paths.params, paths.adapter_config, paths.hf_config, *tokenizer_files)
        if p.is_file()
    ]
    metadata = build_metadata(
        name=name,
        format=plan.format,
        dtype=DTYPE,
        source_dtype=plan.source_dtype,
        parameter_count=sum(math.prod(shape) for shape in plan.shapes.values()),
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
                "base_vocab_size": _piece_count(base_paths.tokenizer_model),
                "vocab_size": trimmed.facts.vocab_size,
                "replaced": {str(i): piece for i, piece in trimmed.replaced.items()},
            },
        },
    )
    write_metadata(paths.metadata, metadata)
    return metadata


def _piece_count(tokenizer_model: Path) -> int:
    from weighted_mtp.models.tokenizer import tokenizer_facts

    return tokenizer_facts(tokenizer_model).vocab_size
