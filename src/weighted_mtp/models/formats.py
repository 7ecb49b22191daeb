"""Model formats: what differs between a Meta MTP folder and a Hugging Face Llama folder.

A format owns its config files (which ones, how they are read, written and cross-checked),
the tensor shapes a config implies, where the upstream checkpoint is and how to open it,
the rotary layout of its q/k rows and how micro models are cut from it. Conversion,
verification and the micro-model builder ask the asset's format (`format_of`) instead of
branching on asset or format names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from weighted_mtp import assets
from weighted_mtp.assets import FormatName
from weighted_mtp.checks import listed
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import (
    HfLlamaConfig,
    MetaParams,
    Shapes,
    hf_llama_tensor_shapes,
    meta_tensor_shapes,
)
from weighted_mtp.models.export_hf import hf_llama_config
from weighted_mtp.models.metadata import adapter_config, read_adapter_config, write_meta_configs
from weighted_mtp.models.upstream_reader import TensorSource, open_files, open_hf_checkpoint
from weighted_mtp.storage.atomic import write_json
from weighted_mtp.storage.layout import ModelPaths

Rotary = Literal["interleaved", "half"]
MAX_LISTED = 3
FFN_MULTIPLE = 256


@dataclass(frozen=True)
class Dims:
    """The sizes slicing and micro models work on, in either format."""

    vocab: int
    dim: int
    ffn: int
    n_heads: int
    kv_heads: int
    head_dim: int
    n_layers: int


@dataclass(frozen=True)
class MicroSize:
    """The size of a micro model; everything else comes from its base's config."""

    dim: int = 512
    n_layers: int = 4
    n_heads: int = 8
    vocab_size: int = 8000
    n_future_tokens: int = 4


@dataclass(frozen=True)
class Architecture:
    """What a folder's configs say the weights must be; `config_files` are the files it was
    read from, the one that decides the tensor shapes first."""

    config: Any  # MetaParams or HfLlamaConfig, as the format says
    shapes: Shapes
    dims: Dims
    rope_theta: float
    config_files: list[Path]

    @property
    def vocab_size(self) -> int:
        return self.dims.vocab


def require_upstream(path: Path) -> Path:
    if not path.is_file():
        raise WmtpError(
            "upstream file not found", path=path, hint="run `wmtp models download` first"
        )
    return path


class ModelFormat(ABC):
    name: ClassVar[FormatName]
    rotary: ClassVar[Rotary]
    embedding: ClassVar[str]  # the token embedding's tensor name
    # Axis kinds of each tensor, by name suffix: what each dimension of the weight indexes.
    # "q"/"kv" are rows (or columns) grouped by head; "+rot" marks rotary pairs in a head.
    slicing_axes: ClassVar[dict[str, tuple[str, ...]]]

    # --- config files of a model folder
    @abstractmethod
    def config_files(self, paths: ModelPaths) -> list[Path]:
        """The configs/ files this format writes."""

    @abstractmethod
    def architecture(self, config: Any, files: list[Path]) -> Architecture: ...

    @abstractmethod
    def read(self, paths: ModelPaths, vocab_size: Callable[[], int]) -> Architecture:
        """The folder's configs; `vocab_size` resolves a vocabulary the configs leave open."""

    @abstractmethod
    def write_configs(self, paths: ModelPaths, config: Any, dtype: str) -> None: ...

    @abstractmethod
    def check_configs(self, paths: ModelPaths, vocab_size: int, dtype: str) -> Architecture:
        """The folder's configs agree with each other and with metadata.json's dtype."""

    # --- the upstream checkpoint
    @abstractmethod
    def upstream(self, paths: ModelPaths, vocab_size: int) -> Architecture:
        """The upstream config in raw/; `vocab_size` (the tokenizer's) resolves an open one."""

    @abstractmethod
    def open_checkpoint(
        self, paths: ModelPaths
    ) -> tuple[AbstractContextManager[TensorSource], Path]:
        """The upstream tensors, and the path to name in errors."""

    @abstractmethod
    def write_converted_configs(
        self, paths: ModelPaths, upstream: Architecture, dtype: str
    ) -> None: ...

    # --- micro models
    @abstractmethod
    def micro_config(self, size: MicroSize, base: Any | None, dtype: str) -> Any:
        """The config of a micro model of `dims`; the base's other settings if given."""

    def micro_source_name(self, name: str, base: Any, micro: Any) -> str:
        """The base tensor a micro tensor is cut from (the same name unless a format maps)."""
        return name

    def check_micro_fits(self, base: Any, micro: Any, base_name: str) -> None:  # noqa: B027
        """Format-specific reasons why `micro` cannot be cut from `base` (none by default)."""

    def tensor_axes(self, tensor: str) -> tuple[str, ...]:
        for suffix, axes in self.slicing_axes.items():
            if tensor.endswith(suffix):
                return axes
        raise WmtpError(f"tensor {tensor} has no slicing rule")


def _problems(what: str, problems: list[str], path: Path) -> None:
    if problems:
        raise WmtpError(f"{what}: {listed(problems, MAX_LISTED)}", path=path)


class MetaMtp(ModelFormat):
    """Meta's multi-token-prediction Llama: `params.json` (+ `meta_adapter.yaml`), names such
    as `layers.{i}.attention.wq.weight` and `extra_heads.{j}.*`, interleaved rotary pairs."""

    name = "meta-mtp"
    rotary = "interleaved"
    embedding = "tok_embeddings.weight"
    slicing_axes: ClassVar[dict[str, tuple[str, ...]]] = {
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

    def config_files(self, paths: ModelPaths) -> list[Path]:
        return [paths.params, paths.adapter_config]

    def architecture(self, config: MetaParams, files: list[Path]) -> Architecture:
        dims = Dims(
            config.vocab_size,
            config.dim,
            config.intermediate_size,
            config.n_heads,
            config.kv_heads,
            config.head_dim,
            config.n_layers,
        )
        return Architecture(config, meta_tensor_shapes(config), dims, config.rope_theta, files)

    def _resolved(self, path: Path, vocab_size: Callable[[], int]) -> MetaParams:
        params = MetaParams.from_file(path)
        if params.vocab_size <= 0:  # Llama's params.json may leave it to the tokenizer
            params = params.with_vocab_size(vocab_size())
        return params

    def read(self, paths: ModelPaths, vocab_size: Callable[[], int]) -> Architecture:
        return self.architecture(self._resolved(paths.params, vocab_size), [paths.params])

    def write_configs(self, paths: ModelPaths, config: MetaParams, dtype: str) -> None:
        write_meta_configs(paths, config, dtype)

    def check_configs(self, paths: ModelPaths, vocab_size: int, dtype: str) -> Architecture:
        params = self._resolved(paths.params, lambda: vocab_size)
        adapter = read_adapter_config(paths.adapter_config)
        expected = adapter_config(params, dtype)
        problems = [
            f"{key} is {adapter.get(key)!r} in meta_adapter.yaml, {value!r} by params.json"
            + (" and metadata.json" if key == "dtype" else "")
            for key, value in expected.items()
            if adapter.get(key) != value
        ]
        problems += [
            f"meta_adapter.yaml has unknown field {key}" for key in adapter if key not in expected
        ]
        _problems("configs disagree", problems, paths.adapter_config)
        return self.architecture(params, [paths.params, paths.adapter_config])

    def upstream(self, paths: ModelPaths, vocab_size: int) -> Architecture:
        params_file = require_upstream(paths.raw_params)
        return self.architecture(self._resolved(params_file, lambda: vocab_size), [params_file])

    def open_checkpoint(
        self, paths: ModelPaths
    ) -> tuple[AbstractContextManager[TensorSource], Path]:
        checkpoint = require_upstream(paths.raw_meta_checkpoint)
        return open_files([checkpoint]), checkpoint

    def write_converted_configs(
        self, paths: ModelPaths, upstream: Architecture, dtype: str
    ) -> None:
        write_meta_configs(paths, upstream.config, dtype, params_source=upstream.config_files[0])

    def micro_config(self, size: MicroSize, base: MetaParams | None, dtype: str) -> MetaParams:
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

    def micro_source_name(self, name: str, base: MetaParams, micro: MetaParams) -> str:
        """Trunk blocks map to the base's leading trunk blocks, head 0 to head 0."""
        if name.startswith(f"layers.{micro.n_trunk_layers}."):
            return name.replace(
                f"layers.{micro.n_trunk_layers}.", f"layers.{base.n_trunk_layers}.", 1
            )
        return name

    def check_micro_fits(self, base: MetaParams, micro: MetaParams, base_name: str) -> None:
        if micro.n_trunk_layers > base.n_trunk_layers or micro.n_extra_heads > base.n_extra_heads:
            raise WmtpError(f"{base_name} has too few blocks or heads for the micro model")


class HfLlama(ModelFormat):
    """A Hugging Face `LlamaForCausalLM`: `config.json`, `model.layers.{i}.*` names,
    half-split rotary pairs."""

    name = "hf-llama"
    rotary = "half"
    embedding = "model.embed_tokens.weight"
    slicing_axes: ClassVar[dict[str, tuple[str, ...]]] = {
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

    def config_files(self, paths: ModelPaths) -> list[Path]:
        return [paths.hf_config]

    def architecture(self, config: HfLlamaConfig, files: list[Path]) -> Architecture:
        dims = Dims(
            config.vocab_size,
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
            config.kv_heads,
            config.head_dim,
            config.num_hidden_layers,
        )
        return Architecture(config, hf_llama_tensor_shapes(config), dims, config.rope_theta, files)

    def read(self, paths: ModelPaths, vocab_size: Callable[[], int]) -> Architecture:
        return self.architecture(HfLlamaConfig.from_file(paths.hf_config), [paths.hf_config])

    def write_configs(self, paths: ModelPaths, config: HfLlamaConfig, dtype: str) -> None:
        write_json(paths.hf_config, config.updated(torch_dtype=dtype).to_dict())

    def check_configs(self, paths: ModelPaths, vocab_size: int, dtype: str) -> Architecture:
        arch = self.read(paths, lambda: vocab_size)
        config = arch.config.to_dict()
        problems = [
            f"{key} is {config[key]!r} in config.json, {dtype!r} in metadata.json"
            for key in ("torch_dtype", "dtype")
            if key in config and config[key] != dtype
        ]
        _problems("configs disagree", problems, paths.hf_config)
        return arch

    def upstream(self, paths: ModelPaths, vocab_size: int) -> Architecture:
        config_file = require_upstream(paths.raw_hf_config)
        return self.architecture(HfLlamaConfig.from_file(config_file), [config_file])

    def open_checkpoint(
        self, paths: ModelPaths
    ) -> tuple[AbstractContextManager[TensorSource], Path]:
        return open_hf_checkpoint(paths.raw_checkpoint_dir), paths.raw_checkpoint_dir

    def write_converted_configs(
        self, paths: ModelPaths, upstream: Architecture, dtype: str
    ) -> None:
        write_json(paths.hf_config, converted_hf_config(upstream.config.to_dict(), dtype))

    def micro_config(
        self, size: MicroSize, base: HfLlamaConfig | None, dtype: str
    ) -> HfLlamaConfig:
        """The base's config at the micro size, keeping its ratio of feed-forward to model
        width (Llama's rule without a base)."""
        if base is None:
            params = MetaMtp().micro_config(size, None, dtype)
            return HfLlamaConfig.from_dict(
                hf_llama_config(params, n_layers=size.n_layers, dtype=dtype)
            )
        ffn = _round_up(size.dim * base.intermediate_size // base.hidden_size, FFN_MULTIPLE)
        kv_heads = max(1, size.n_heads * base.kv_heads // base.num_attention_heads)
        fields = {k: v for k, v in base.to_dict().items() if k != "transformers_version"}
        fields.update(
            {
                "hidden_size": size.dim,
                "intermediate_size": min(ffn, base.intermediate_size),
                "num_hidden_layers": size.n_layers,
                "num_attention_heads": size.n_heads,
                "num_key_value_heads": kv_heads,
                "head_dim": size.dim // size.n_heads,
                "vocab_size": size.vocab_size,
                "torch_dtype": dtype,
            }
        )
        return HfLlamaConfig.from_dict(fields)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def converted_hf_config(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The upstream config.json with its dtype field naming the converted dtype."""
    keys = [key for key in ("torch_dtype", "dtype") if key in config] or ["torch_dtype"]
    return {**config, **dict.fromkeys(keys, dtype)}


FORMATS: dict[str, ModelFormat] = {fmt.name: fmt for fmt in (MetaMtp(), HfLlama())}


def format_named(name: str) -> ModelFormat:
    fmt = FORMATS.get(name)
    if fmt is None:
        raise WmtpError(f"unknown model format {name!r}", hint=f"one of: {', '.join(FORMATS)}")
    return fmt


def format_of(asset: str) -> ModelFormat:
    """The format of the registry's model `asset`."""
    spec = assets.spec(asset)
    if not isinstance(spec, assets.ModelSpec):
        raise WmtpError(f"{asset} is not a model")
    return FORMATS[spec.format]
