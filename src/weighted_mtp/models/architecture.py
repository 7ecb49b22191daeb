"""Architectures as data: typed configs and the tensor names and shapes they imply.

This is the contract between conversion, verification, the adapter and the micro models:
each of them asks here which tensors a Meta MTP `params.json` (`MetaParams`) or a Hugging
Face Llama `config.json` (`HfLlamaConfig`) must have, instead of keeping its own list. Derived
sizes (head dimension, key/value heads, feed-forward size) and defaults (rope_theta) are
computed here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import read_json

Shapes = dict[str, tuple[int, ...]]

_META_SIZES = ("dim", "n_layers", "n_heads", "multiple_of", "max_seq_len", "n_future_tokens")
_HF_SIZES = (
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "num_hidden_layers",
)
_HF_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim")
DEFAULT_ROPE_THETA = 10000.0  # Llama's, when a config does not say

# Upper bounds far beyond any Llama-family model, checked before the list of expected
# tensors is built: a config claiming a million layers is refused, not enumerated.
MAX_WIDTH = 1 << 17  # dim, hidden_size, intermediate_size
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_VOCAB = 1 << 22
MAX_SEQ_LEN = 1 << 24
SIZE_BOUNDS = {
    "dim": MAX_WIDTH,
    "hidden_size": MAX_WIDTH,
    "intermediate_size": MAX_WIDTH,
    "head_dim": MAX_WIDTH,
    "multiple_of": MAX_WIDTH,
    "n_layers": MAX_LAYERS,
    "num_hidden_layers": MAX_LAYERS,
    "n_future_tokens": MAX_LAYERS,
    "n_heads": MAX_HEADS,
    "n_kv_heads": MAX_HEADS,
    "num_attention_heads": MAX_HEADS,
    "num_key_value_heads": MAX_HEADS,
    "vocab_size": MAX_VOCAB,
    "max_seq_len": MAX_SEQ_LEN,
}
# Floats that must be positive and finite (and below a bound where one is physical).
POSITIVE_FLOATS = {
    "rope_theta": math.inf,
    "norm_eps": 1.0,
    "rms_norm_eps": 1.0,
    "ffn_dim_multiplier": 64.0,
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def non_finite_key(data: Any, prefix: str = "") -> str | None:
    """The first key (dotted path) holding a NaN or an infinity anywhere in `data`."""
    if isinstance(data, float) and not math.isfinite(data):
        return prefix or "(the value)"
    children = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in children:
        found = non_finite_key(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def config_value_problem(name: str, value: Any) -> str | None:
    """Why a config value is not physical (a size out of range, an epsilon or rope_theta
    that is not a positive finite number), or None if it is fine or not one we check."""
    if name in SIZE_BOUNDS and _positive_int(value) and value > SIZE_BOUNDS[name]:
        return f"{name} {value} is beyond the sane maximum {SIZE_BOUNDS[name]}"
    if name in POSITIVE_FLOATS and not (name == "ffn_dim_multiplier" and value is None):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 < value < POSITIVE_FLOATS[name]:
            bound = POSITIVE_FLOATS[name]
            below = f" below {bound:g}" if math.isfinite(bound) else ""
            return f"{name} must be a positive finite number{below}, not {value!r}"
    return None


def check_config_values(data: dict[str, Any], fail: Callable[[str], None]) -> None:
    """Refuse NaN/Infinity anywhere and every non-physical known value, before any work."""
    key = non_finite_key(data)
    if key:
        fail(f"{key} is not a finite number")
    for name, value in data.items():
        problem = config_value_problem(name, value)
        if problem:
            fail(problem)


def llama_intermediate_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Llama's SwiGLU hidden size: 2/3 of 4*dim, scaled, rounded up to `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class MetaParams:
    """Meta's `params.json` (Llama `ModelArgs` semantics, plus `n_future_tokens`)."""

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = DEFAULT_ROPE_THETA
    max_seq_len: int = 2048
    n_future_tokens: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "params.json") -> MetaParams:
        known = set(cls.__dataclass_fields__)
        if not isinstance(data, dict):
            raise WmtpError("params.json is not a JSON object", path=source)
        missing = [k for k in ("dim", "n_layers", "n_heads") if k not in data]
        if missing:
            raise WmtpError(f"params.json lacks {', '.join(missing)}", path=source)
        try:
            params = cls(**{k: v for k, v in data.items() if k in known and v is not None})
        except TypeError as exc:
            raise WmtpError(f"params.json is malformed: {exc}", path=source) from None
        params.validate(source)
        return params

    @classmethod
    def from_file(cls, path: str | Path) -> MetaParams:
        return cls.from_dict(read_json(path, "params.json"), path)

    def validate(self, source: str | Path = "params.json") -> None:
        def fail(why: str) -> None:
            raise WmtpError(f"params.json is inconsistent: {why}", path=source)

        for name in _META_SIZES:
            if not _positive_int(getattr(self, name)):
                fail(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if self.n_kv_heads is not None and not _positive_int(self.n_kv_heads):
            fail(f"n_kv_heads must be a positive integer, not {self.n_kv_heads!r}")
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool):
            fail(f"vocab_size must be an integer, not {self.vocab_size!r}")
        if self.dim % self.n_heads:
            fail(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            fail(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if not 1 <= self.n_future_tokens <= self.n_layers:
            fail(f"n_future_tokens {self.n_future_tokens} must be in 1..n_layers")
        if self.head_dim % 2:
            fail(f"head dimension {self.head_dim} must be even for rotary embeddings")
        check_config_values(asdict(self), fail)

    def with_vocab_size(self, vocab_size: int) -> MetaParams:
        """Llama's params.json may say `vocab_size: -1` (take it from the tokenizer)."""
        return MetaParams(**{**asdict(self), "vocab_size": vocab_size})

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def intermediate_size(self) -> int:
        return llama_intermediate_size(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def n_trunk_layers(self) -> int:
        return self.n_layers - self.n_future_tokens

    @property
    def n_extra_heads(self) -> int:
        return self.n_future_tokens - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _meta_block(prefix: str, p: MetaParams) -> Shapes:
    d, hd, h = p.dim, p.head_dim, p.intermediate_size
    return {
        f"{prefix}.attention.wq.weight": (p.n_heads * hd, d),
        f"{prefix}.attention.wk.weight": (p.kv_heads * hd, d),
        f"{prefix}.attention.wv.weight": (p.kv_heads * hd, d),
        f"{prefix}.attention.wo.weight": (d, p.n_heads * hd),
        f"{prefix}.feed_forward.w1.weight": (h, d),
        f"{prefix}.feed_forward.w2.weight": (d, h),
        f"{prefix}.feed_forward.w3.weight": (h, d),
        f"{prefix}.attention_norm.weight": (d,),
        f"{prefix}.ffn_norm.weight": (d,),
    }


def meta_tensor_shapes(p: MetaParams) -> Shapes:
    """Every tensor of a Meta MTP checkpoint: `layers.0..n_layers-n_future_tokens` (the
    trunk, then head 0) and `extra_heads.0..n_future_tokens-2` (heads 1..)."""
    if p.vocab_size <= 0:
        raise WmtpError("vocab_size must be resolved before listing tensors (params says -1)")
    shapes: Shapes = {"tok_embeddings.weight": (p.vocab_size, p.dim)}
    for i in range(p.n_trunk_layers + 1):
        shapes.update(_meta_block(f"layers.{i}", p))
    for j in range(p.n_extra_heads):
        shapes.update(_meta_block(f"extra_heads.{j}", p))
    shapes["norm.weight"] = (p.dim,)
    shapes["output.weight"] = (p.vocab_size, p.dim)
    return shapes


@dataclass(frozen=True)
class HfLlamaConfig:
    """A Hugging Face Llama `config.json`: the sizes wmtp relies on, typed and checked, and
    the file's fields verbatim (`others`) so that writing it back loses nothing."""

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_hidden_layers: int
    num_key_value_heads: int | None = None
    explicit_head_dim: int | None = None
    rope_theta: float = DEFAULT_ROPE_THETA
    tie_word_embeddings: bool = False
    others: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "config.json") -> HfLlamaConfig:
        if not isinstance(data, dict):
            raise WmtpError("config.json is not a JSON object", path=source)
        missing = [key for key in _HF_SIZES if key not in data]
        if missing:
            raise WmtpError(f"config.json lacks {missing[0]}", path=source)
        sizes = {key: data[key] for key in _HF_SIZES}
        sizes.update({key: data[key] for key in _HF_OPTIONAL_SIZES if data.get(key)})
        for key, value in sizes.items():
            if not _positive_int(value):
                raise WmtpError(
                    f"config.json {key} must be a positive integer, not {value!r}", path=source
                )

        def fail(why: str) -> None:
            raise WmtpError(f"config.json is not physical: {why}", path=source)

        check_config_values(data, fail)
        return cls(
            hidden_size=sizes["hidden_size"],
            num_attention_heads=sizes["num_attention_heads"],
            intermediate_size=sizes["intermediate_size"],
            vocab_size=sizes["vocab_size"],
            num_hidden_layers=sizes["num_hidden_layers"],
            num_key_value_heads=sizes.get("num_key_value_heads"),
            explicit_head_dim=sizes.get("head_dim"),
            rope_theta=data.get("rope_theta", DEFAULT_ROPE_THETA),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            others=dict(data),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> HfLlamaConfig:
        return cls.from_dict(read_json(path, "config.json"), path)

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    def updated(self, **changes: Any) -> HfLlamaConfig:
        """A copy with fields changed, typed (`hidden_size`) or verbatim (`torch_dtype`)."""
        return HfLlamaConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """config.json content: every field in its original order, typed values updated."""
        data = dict(self.others)
        typed: dict[str, Any] = {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.explicit_head_dim,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        defaults = {None, DEFAULT_ROPE_THETA, False}
        for key, value in typed.items():
            if key in data or value not in defaults:
                data[key] = value
        return data


def hf_llama_tensor_shapes(config: HfLlamaConfig) -> Shapes:
    """Every tensor of a Hugging Face `LlamaForCausalLM` state dict, from its config."""
    d, n_heads, kv, hd = (
        config.hidden_size,
        config.num_attention_heads,
        config.kv_heads,
        config.head_dim,
    )
    h, vocab = config.intermediate_size, config.vocab_size
    shapes: Shapes = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes.update(
            {
                f"{p}.self_attn.q_proj.weight": (n_heads * hd, d),
                f"{p}.self_attn.k_proj.weight": (kv * hd, d),
                f"{p}.self_attn.v_proj.weight": (kv * hd, d),
                f"{p}.self_attn.o_proj.weight": (d, n_heads * hd),
                f"{p}.mlp.gate_proj.weight": (h, d),
                f"{p}.mlp.up_proj.weight": (h, d),
                f"{p}.mlp.down_proj.weight": (d, h),
                f"{p}.input_layernorm.weight": (d,),
                f"{p}.post_attention_layernorm.weight": (d,),
            }
        )
    shapes["model.norm.weight"] = (d,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


def compare_shapes(expected: Shapes, actual: Shapes) -> list[str]:
    """Human-readable differences: missing, unexpected and mis-shaped tensors."""
    problems = [f"missing tensor {name}" for name in expected if name not in actual]
    problems += [f"unexpected tensor {name}" for name in actual if name not in expected]
    problems += [
        f"tensor {name} has shape {list(actual[name])}, expected {list(shape)}"
        for name, shape in expected.items()
        if name in actual and tuple(actual[name]) != tuple(shape)
    ]
    return problems
