"""metadata.json of a model folder, and the Meta-format config files.

Every model folder (converted bases and micro models alike) carries the same metadata
fields, so verification, reports and the adapter read them one way. The functions here take
values, not a particular asset: the conversion and the micro-model builder both use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from weighted_mtp import __version__
from weighted_mtp.assets import FORMAT_NAMES
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.models.tokenizer import TokenizerFacts
from weighted_mtp.storage.atomic import read_json, write_bytes, write_json, write_text
from weighted_mtp.storage.layout import MICRO_MODELS, MODELS, ModelPaths

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_ID = {"type": ["integer", "null"]}

METADATA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "name",
        "format",
        "dtype",
        "source_dtype",
        "parameter_count",
        "weights",
        "tokenizer",
        "tokenizer_shared_with",
        "source",
        "created_at",
        "tool_version",
    ],
    "properties": {
        "name": {"enum": list(MODELS)},
        "format": {"enum": list(FORMAT_NAMES)},
        "dtype": {"enum": ["float16", "bfloat16", "float32"]},
        "source_dtype": {"type": "string"},
        "parameter_count": {"type": "integer", "minimum": 1},
        "weights": {
            "type": "object",
            "required": ["path", "size", "sha256"],
            "properties": {
                "path": {"const": "safetensors/model.safetensors"},
                "size": {"type": "integer", "minimum": 8},
                "sha256": _SHA256,
            },
        },
        "tokenizer": {
            "type": "object",
            "required": ["path", "sha256", "vocab_size", "bos_id", "eos_id", "unk_id", "pad_id"],
            "properties": {
                "path": {"const": "tokenizer/tokenizer.model"},
                "sha256": _SHA256,
                "vocab_size": {"type": "integer", "minimum": 1},
                "bos_id": _ID,
                "eos_id": _ID,
                "unk_id": _ID,
                "pad_id": _ID,
            },
        },
        "tokenizer_shared_with": {"type": ["string", "null"]},
        "tokenizer_difference": {"type": "string"},
        "source": {"type": "object"},
        "files": {"type": "object", "additionalProperties": _SHA256},
        "created_at": {"type": "string", "format": "date-time"},
        "tool_version": {"type": "string"},
    },
    "allOf": [
        {
            "if": {"properties": {"name": {"enum": list(MICRO_MODELS)}}},
            "then": {
                "required": ["target_device", "init", "seed", "tokenizer_trimmed"],
                "properties": {
                    "target_device": {"const": "mps"},
                    "init": {"enum": ["slice", "random"]},
                    "seed": {"type": "integer"},
                    "tokenizer_trimmed": {
                        "type": "object",
                        "required": ["from", "base_vocab_size", "vocab_size"],
                    },
                    "source": {"required": ["model", "sha256"]},
                },
            },
            "else": {"properties": {"source": {"required": ["repo", "revision", "files"]}}},
        }
    ],
}


def folder_relative(paths: ModelPaths, path: Path) -> str:
    """How metadata names a file: relative to the model folder, POSIX style."""
    return path.relative_to(paths.root).as_posix()


def weights_entry(paths: ModelPaths, size: int, sha256: str) -> dict[str, Any]:
    return {"path": folder_relative(paths, paths.weights), "size": size, "sha256": sha256}


def tokenizer_entry(paths: ModelPaths, sha256: str, facts: TokenizerFacts) -> dict[str, Any]:
    return {
        "path": folder_relative(paths, paths.tokenizer_model),
        "sha256": sha256,
        **facts.to_dict(),
    }


def build_metadata(
    *,
    name: str,
    format: str,
    dtype: str,
    source_dtype: str,
    parameter_count: int,
    weights: dict[str, Any],
    tokenizer: dict[str, Any],
    source: dict[str, Any],
    tokenizer_shared_with: str | None = None,
    tokenizer_difference: str | None = None,
    files: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The agreed metadata.json content. `files` maps other folder files (configs,
    tokenizer_config.json) to their SHA-256; `extra` adds fields such as the micro ones."""
    metadata: dict[str, Any] = {
        "name": name,
        "format": format,
        "dtype": dtype,
        "source_dtype": source_dtype,
        "parameter_count": parameter_count,
        "weights": weights,
        "tokenizer": tokenizer,
        "tokenizer_shared_with": tokenizer_shared_with,
    }
    if tokenizer_difference is not None:
        metadata["tokenizer_difference"] = tokenizer_difference
    metadata["source"] = source
    if files:
        metadata["files"] = dict(sorted(files.items()))
    metadata.update(extra or {})
    metadata["created_at"] = utc_now()
    metadata["tool_version"] = __version__
    validate_metadata(metadata)
    return metadata


@dataclass(frozen=True)
class WeightsEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TokenizerEntry:
    path: str
    sha256: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None

    def facts(self) -> dict[str, Any]:
        """The fields `TokenizerFacts.to_dict()` has, for comparison with the model file."""
        return {k: v for k, v in self.__dict__.items() if k not in ("path", "sha256")}


@dataclass(frozen=True)
class TrimmedTokenizer:
    """A micro model's tokenizer: the first `vocab_size` pieces of its base's."""

    base: str
    base_vocab_size: int
    vocab_size: int
    replaced: dict[int, str] = field(default_factory=dict)  # id -> the piece it replaced


@dataclass(frozen=True)
class ModelMetadata:
    """A validated metadata.json, typed. `raw` is the file's content as written."""

    name: str
    format: str
    dtype: str
    source_dtype: str
    parameter_count: int
    weights: WeightsEntry
    tokenizer: TokenizerEntry
    tokenizer_shared_with: str | None
    tokenizer_difference: str | None
    source: dict[str, Any]
    files: dict[str, str]
    tokenizer_trimmed: TrimmedTokenizer | None
    init: str | None
    seed: int | None
    raw: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path = "metadata.json") -> ModelMetadata:
        validate_metadata(data, path)
        trimmed = data.get("tokenizer_trimmed")
        return cls(
            name=data["name"],
            format=data["format"],
            dtype=data["dtype"],
            source_dtype=data["source_dtype"],
            parameter_count=data["parameter_count"],
            weights=WeightsEntry(**data["weights"]),
            tokenizer=TokenizerEntry(
                **{k: data["tokenizer"][k] for k in TokenizerEntry.__dataclass_fields__}
            ),
            tokenizer_shared_with=data["tokenizer_shared_with"],
            tokenizer_difference=data.get("tokenizer_difference"),
            source=data["source"],
            files=data.get("files", {}),
            tokenizer_trimmed=TrimmedTokenizer(
                trimmed["from"],
                trimmed["base_vocab_size"],
                trimmed["vocab_size"],
                {int(i): p for i, p in trimmed.get("replaced", {}).items()},
            )
            if trimmed
            else None,
            init=data.get("init"),
            seed=data.get("seed"),
            raw=data,
        )

    @property
    def raw_files(self) -> dict[str, str]:
        """SHA-256 of the upstream files it was converted from, keyed by path in raw/."""
        files = self.source.get("files")
        return files if isinstance(files, dict) else {}

    @property
    def derived_from(self) -> str | None:
        model = self.source.get("model")
        return model if isinstance(model, str) else None


def validate_metadata(metadata: Any, path: str | Path = "metadata.json") -> None:
    try:
        jsonschema.validate(metadata, METADATA_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise WmtpError(f"metadata.json field {where}: {exc.message}", path=path) from None


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    validate_metadata(metadata, path)
    write_json(path, metadata)


def read_metadata(path: str | Path) -> ModelMetadata:
    return ModelMetadata.from_dict(read_json(path, "metadata.json"), path)


def adapter_config(params: MetaParams, dtype: str) -> dict[str, Any]:
    """`meta_adapter.yaml`: the architecture with derived sizes spelled out."""
    return {
        "dim": params.dim,
        "n_layers": params.n_layers,
        "n_heads": params.n_heads,
        "n_kv_heads": params.kv_heads,
        "n_future_tokens": params.n_future_tokens,
        "vocab_size": params.vocab_size,
        "intermediate_size": params.intermediate_size,
        "multiple_of": params.multiple_of,
        "ffn_dim_multiplier": params.ffn_dim_multiplier,
        "rope_theta": float(params.rope_theta),
        "norm_eps": float(params.norm_eps),
        "max_seq_len": params.max_seq_len,
        "dtype": dtype,
    }


ADAPTER_HEADER = (
    "# Meta MTP architecture for weighted_mtp's adapter, derived from params.json.\n"
    "# intermediate_size follows Llama's rule from dim, multiple_of and ffn_dim_multiplier.\n"
)


def write_meta_configs(
    paths: ModelPaths, params: MetaParams, dtype: str, *, params_source: Path | None = None
) -> None:
    """configs/params.json (a byte copy of `params_source` if given, else written from
    `params`) and configs/meta_adapter.yaml. `params` must have its vocab size resolved."""
    if params_source is not None:
        write_bytes(paths.params, Path(params_source).read_bytes())
    else:
        write_json(paths.params, params.to_dict())
    body = yaml.safe_dump(adapter_config(params, dtype), sort_keys=False)
    write_text(paths.adapter_config, ADAPTER_HEADER + body)


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WmtpError("meta_adapter.yaml not found", path=path) from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise WmtpError("meta_adapter.yaml is not valid YAML", path=path) from None
    if not isinstance(data, dict):
        raise WmtpError("meta_adapter.yaml is not a mapping", path=path)
    return data
