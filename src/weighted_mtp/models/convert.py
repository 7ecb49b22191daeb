"""Converting an upstream checkpoint into the project's model folder, streaming.

Everything that can be checked before writing is checked first: the tensor names and shapes
against the architecture the config implies, the tokenizer against the vocabulary, a shard
index against its shards. Then tensors are read in row chunks from memory-mapped files, each
chunk checked (NaN/Inf in the source, overflow in the target dtype), cast and appended to
`safetensors/model.safetensors`, hashed on the way. Extra memory is a few chunks (the one
being cast and those queued for the writer thread), not the model.

Rotary-embedding buffers that older checkpoints carry (`*.rotary_emb.inv_freq`, Llama-1's
`rope.freqs`) are derived from `rope_theta`, not weights: they are checked against the
configured theta and left out, which metadata.json records.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp import assets, progress
from weighted_mtp.checks import listed
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.models.architecture import Shapes, compare_shapes
from weighted_mtp.models.formats import format_of, require_upstream
from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
from weighted_mtp.models.metadata import (
    build_metadata,
    folder_relative,
    tokenizer_entry,
    weights_entry,
    write_metadata,
)
from weighted_mtp.models.safetensors_stream import SafetensorsWriter, TensorSpec, WrittenFile
from weighted_mtp.models.tokenizer import TokenizerFacts, shared_with_meta, tokenizer_facts
from weighted_mtp.models.upstream_download import recorded_hash
from weighted_mtp.models.upstream_reader import TensorSource
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import read_json
from weighted_mtp.storage.hashing import sha256_file, write_sha256sums
from weighted_mtp.storage.layout import Layout, ModelPaths
from weighted_mtp.storage.tree import iter_files

if TYPE_CHECKING:
    import torch

TARGET_DTYPES = ("float16", "bfloat16", "float32")
ROTARY_BUFFER = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope\.freqs$")
MAX_LISTED_PROBLEMS = 3


def convert_model(layout: Layout, name: str, *, dtype: str = "float16") -> dict[str, Any]:
    """Convert a downloaded base model; returns the metadata.json content."""
    if dtype not in TARGET_DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint=f"choose {', '.join(TARGET_DTYPES)}")
    if "convert" not in assets.spec(name).build:
        raise UsageError(
            f"{name} is not converted from an upstream checkpoint",
            hint=f"build it with `wmtp models micro {name}`",
        )
    paths = layout.model(name)
    freshness.clear(layout, name)
    fmt = format_of(name)
    facts = tokenizer_facts(require_upstream(paths.tokenizer_model))
    upstream = fmt.upstream(paths, facts.vocab_size)
    config_file = upstream.config_files[0]
    _require_same_vocab(facts, upstream.vocab_size, config_file)
    opened, where = fmt.open_checkpoint(paths)
    with opened as source:
        plan = plan_conversion(
            source,
            upstream.shapes,
            upstream.rope_theta,
            upstream.dims.head_dim,
            where,
            config_file.name,
        )
        written = stream_convert(source, plan, paths.weights, dtype, paths.name)
    write_sha256sums(paths.sha256sums, {paths.weights.name: written.sha256})
    fmt.write_converted_configs(paths, upstream, dtype)
    tokenizer_files = write_hf_tokenizer(
        paths.tokenizer_dir,
        paths.tokenizer_model,
        keep_upstream_json=assets.model(name).upstream_tokenizer_json,
    )
    shared, difference = (
        shared_with_meta(layout, paths.tokenizer_model)
        if assets.compares_tokenizer(name)
        else (None, None)
    )
    metadata = _metadata(
        paths,
        fmt.name,
        dtype,
        plan,
        written,
        facts,
        [*fmt.config_files(paths), *tokenizer_files],
        shared_with=shared,
        difference=difference,
    )
    write_metadata(paths.metadata, metadata)
    return metadata


# --- shared steps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionPlan:
    expected: Shapes  # output tensors, in output order
    dropped: list[str]  # derived rotary buffers, checked and left out
    files: list[Path]  # the checkpoint files read
    source_dtype: str


def plan_conversion(
    source: TensorSource,
    expected: Shapes,
    rope_theta: float,
    head_dim: int,
    where: Path,
    config_name: str,
) -> ConversionPlan:
    """Check the checkpoint against the architecture before anything is written."""
    dropped = [name for name in source.info if ROTARY_BUFFER.search(name)]
    for name in dropped:
        _check_rotary_buffer(source, name, rope_theta, head_dim, config_name)
    actual = {n: s for n, s in source.shapes().items() if n not in dropped}
    problems = compare_shapes(expected, actual)
    if problems:
        raise WmtpError(
            f"checkpoint does not match {config_name}: {listed(problems, MAX_LISTED_PROBLEMS)}",
            path=where,
            hint=f"{config_name} must describe this checkpoint",
        )
    dtypes = sorted({_dtype_name(source.info[n].dtype) for n in expected})
    return ConversionPlan(expected, dropped, source.files, "+".join(dtypes))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rotary_inv_freq(rope_theta: float, head_dim: int) -> torch.Tensor:
    import torch

    return 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def _check_rotary_buffer(
    source: TensorSource, name: str, rope_theta: float, head_dim: int, config_name: str
) -> None:
    import torch

    stored = source.tensor(name)
    expected = rotary_inv_freq(rope_theta, head_dim)
    tolerance = max(torch.finfo(stored.dtype).eps, 1e-6) if stored.is_floating_point() else 0
    if stored.shape != expected.shape or not torch.allclose(
        stored.float(), expected, rtol=tolerance, atol=0
    ):
        raise WmtpError(
            f"rotary buffer {name} does not match rope_theta {rope_theta} and head dim "
            f"{head_dim} from {config_name}",
            path=source.info[name].file,
            hint=f"{config_name} may not belong to this checkpoint",
        )


def stream_convert(
    source: TensorSource, plan: ConversionPlan, out: Path, dtype: str, model_name: str
) -> WrittenFile:
    """Cast and write every planned tensor, chunk by chunk, into one safetensors file."""
    import torch

    target = getattr(torch, dtype)
    specs = [TensorSpec.of(name, target, shape) for name, shape in plan.expected.items()]
    header = {"format": "pt", "model": model_name, "dtype": dtype}
    total = sum(_nbytes(source, n) for n in plan.expected)
    with (
        progress.task(f"convert {model_name} to {dtype}", total, "bytes") as advance,
        SafetensorsWriter(out, specs, header) as writer,
    ):
        for name in plan.expected:
            for chunk in source.chunks(name):
                writer.write(name, checked_cast(chunk, target, name, source.info[name].file))
                advance(chunk.numel() * chunk.element_size())
    return writer.written


def _nbytes(source: TensorSource, name: str) -> int:
    info = source.info[name]
    return math.prod(info.shape) * info.dtype.itemsize


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf. min and max propagate both, and one fused reduction is ~7x faster than
    `isfinite().all()`, which materialises a mask."""
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def checked_cast(chunk: torch.Tensor, target: torch.dtype, name: str, file: Path) -> torch.Tensor:
    """`chunk` in `target`; NaN/Inf in the source or overflow in the target is an error.

    Casting keeps NaN/Inf and turns overflow into Inf, so one check of the result finds both;
    the source is only looked at again to say which it was."""
    import torch

    cast = chunk.to(target)
    if all_finite(cast):
        return cast
    if not all_finite(chunk):
        raise WmtpError(
            f"tensor {name} contains NaN or Inf",
            path=file,
            hint="the checkpoint is corrupted: download it again",
        )
    largest = float(chunk.abs().max())
    raise WmtpError(
        f"tensor {name} overflows {_dtype_name(target)}: a value of magnitude "
        f"{largest:.6g} exceeds {torch.finfo(target).max:.6g}",
        path=file,
        hint="convert with --dtype bfloat16 (same range as float32)",
    )


def _require_same_vocab(facts: TokenizerFacts, vocab_size: int, config: Path) -> None:
    if facts.vocab_size != vocab_size:
        raise WmtpError(
            f"the tokenizer has {facts.vocab_size} pieces but {config.name} says vocab_size "
            f"{vocab_size}",
            path=config,
            hint="tokenizer and checkpoint must come together",
        )


def raw_file_hashes(paths: ModelPaths) -> dict[str, str]:
    """SHA-256 of every upstream checkpoint file, keyed by its path relative to raw/."""
    hashes = {}
    for path in iter_files(paths.raw_checkpoint_dir):
        if ".cache" in path.relative_to(paths.raw).parts:
            continue
        digest = recorded_hash(paths, path) or sha256_file(path, show_progress=True)
        hashes[path.relative_to(paths.raw).as_posix()] = digest
    return hashes


def _source_entry(paths: ModelPaths) -> dict[str, Any]:
    recorded = read_json(paths.source, "SOURCE.json") if paths.source.is_file() else {}
    entry = {
        "repo": recorded.get("repo"),
        "revision": recorded.get("commit") or recorded.get("revision"),
        "files": raw_file_hashes(paths),
    }
    if recorded.get("mirror"):
        entry["mirror"] = recorded["mirror"]
    if not recorded:
        entry["note"] = "raw files were not fetched by wmtp (no raw/SOURCE.json)"
    return entry


def _metadata(
    paths: ModelPaths,
    fmt: str,
    dtype: str,
    plan: ConversionPlan,
    written: WrittenFile,
    facts: TokenizerFacts,
    config_files: list[Path],
    *,
    shared_with: str | None = None,
    difference: str | None = None,
) -> dict[str, Any]:
    extra = {}
    if plan.dropped:
        extra["dropped_tensors"] = {
            "names": plan.dropped,
            "reason": "rotary buffers derived from rope_theta; checked against it, not stored",
        }
    return build_metadata(
        name=paths.name,
        format=fmt,
        dtype=dtype,
        source_dtype=plan.source_dtype,
        parameter_count=sum(math.prod(shape) for shape in plan.expected.values()),
        weights=weights_entry(paths, written.size, written.sha256),
        tokenizer=tokenizer_entry(paths, sha256_file(paths.tokenizer_model), facts),
        source=_source_entry(paths),
        tokenizer_shared_with=shared_with,
        tokenizer_difference=difference,
        files={folder_relative(paths, path): sha256_file(path) for path in config_files},
        extra=extra,
    )
