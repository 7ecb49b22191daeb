"""Synthetic upstream checkpoints, laid out exactly like the real hub repos.

Tests, the benchmark and the offline demo need upstream-format inputs without the 15 GB
download: random tensors under the real names and shapes, saved with `torch.save` the way
the upstream files are. `write_meta_mirror` mimics `facebook/multi-token-prediction`,
`write_reference_mirror` mimics `princeton-nlp/Sheared-LLaMA-2.7B` (every file at the root).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weighted_mtp import assets
from weighted_mtp.models.architecture import (
    HfLlamaConfig,
    MetaParams,
    hf_llama_tensor_shapes,
    meta_tensor_shapes,
)
from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
from weighted_mtp.models.tokenizer import tokenizer_facts
from weighted_mtp.storage.atomic import atomic_write, write_json
from weighted_mtp.storage.layout import ModelPaths

META_CHECKPOINT_DIR = assets.model(assets.META_MODEL).raw_checkpoint_dir or ""

# At least the micro size (dim 512, 8 heads, >= 4 layers), under 100 MB in bfloat16.
DEFAULT_META_PARAMS = {
    "dim": 512,
    "n_layers": 6,
    "n_heads": 8,
    "multiple_of": 256,
    "ffn_dim_multiplier": 1.0,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "n_future_tokens": 4,
}
# Sheared-LLaMA's config.json keys, scaled down (float32 like the upstream shards).
DEFAULT_REFERENCE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "num_hidden_layers": 4,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float32",
    "initializer_range": 0.02,
}
REFERENCE_GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _vocab_size(tokenizer_model: Path) -> int:

    return tokenizer_facts(tokenizer_model).vocab_size


def _random_tensors(
    shapes: dict[str, tuple[int, ...]], seed: int, dtype: Any
) -> Iterator[tuple[str, Any]]:
    """Weights ~ N(0, 0.02); norm weights ~ 1 + N(0, 0.02), like a trained model's scale."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator) * 0.02
        if len(shape) == 1:
            values += 1.0
        yield name, values.to(dtype)


def _torch_save(obj: Any, out: Path) -> None:
    import torch

    with atomic_write(out, "wb") as handle:
        torch.save(obj, handle)


def _copy_tokenizer(tokenizer_model: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_model, out)


def write_meta_mirror(
    out_dir: str | Path,
    *,
    tokenizer_model: str | Path,
    params: MetaParams | dict[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "bfloat16",
) -> Path:
    """`out_dir/7B_1T_4/{consolidated.pth,params.json}` and `out_dir/tokenizer.model`.

    `params` (a MetaParams or a params.json dict) defaults to a small MTP model whose vocab
    is the tokenizer's; a dict is written as given, so `vocab_size: -1` can be tested."""
    import torch

    out_dir, tokenizer_model = Path(out_dir), Path(tokenizer_model)
    raw = (
        params.to_dict()
        if isinstance(params, MetaParams)
        else dict(params or {**DEFAULT_META_PARAMS, "vocab_size": _vocab_size(tokenizer_model)})
    )
    resolved = MetaParams.from_dict(raw)
    if resolved.vocab_size <= 0:
        resolved = resolved.with_vocab_size(_vocab_size(tokenizer_model))
    tensors = dict(_random_tensors(meta_tensor_shapes(resolved), seed, getattr(torch, dtype)))
    _torch_save(tensors, out_dir / META_CHECKPOINT_DIR / "consolidated.pth")
    write_json(out_dir / META_CHECKPOINT_DIR / "params.json", raw)
    _copy_tokenizer(tokenizer_model, out_dir / "tokenizer.model")
    return out_dir


def _inv_freq(config: HfLlamaConfig) -> Any:
    import torch

    head_dim, theta = config.head_dim, config.rope_theta
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def _shard_names(n_shards: int, shard_format: str) -> tuple[list[str], str]:
    if shard_format == "bin":
        names = [f"pytorch_model-{i:05d}-of-{n_shards:05d}.bin" for i in range(1, n_shards + 1)]
        return names, "pytorch_model.bin.index.json"
    if shard_format == "safetensors":
        names = [f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)]
        return names, "model.safetensors.index.json"
    raise ValueError(f"shard_format must be 'bin' or 'safetensors', not {shard_format!r}")


@functools.cache
def _hf_tokenizer_files(tokenizer_sha256: str, tokenizer_model: Path) -> dict[str, bytes]:
    """The transformers tokenizer files beside tokenizer.model (tokenizer.json,
    tokenizer_config.json, as wmtp writes them), built once per tokenizer and process."""
    with tempfile.TemporaryDirectory() as tmp:
        write_hf_tokenizer(Path(tmp), tokenizer_model)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.name != "tokenizer.model"}


def _write_hf_tokenizer_files(tokenizer_model: Path, out_dir: Path) -> None:
    digest = hashlib.sha256(tokenizer_model.read_bytes()).hexdigest()
    for name, data in _hf_tokenizer_files(digest, tokenizer_model).items():
        with atomic_write(out_dir / name, "wb") as handle:
            handle.write(data)


def write_reference_mirror(
    out_dir: str | Path,
    *,
    tokenizer_model: str | Path,
    config: dict[str, Any] | None = None,
    n_shards: int = 2,
    seed: int = 0,
    shard_format: str = "bin",
    rotary_buffers: bool | None = None,
) -> Path:
    """Sheared-LLaMA's root files in `out_dir`: the shards and their index, config.json,
    generation_config.json, tokenizer.model and transformers' tokenizer files.

    `rotary_buffers` adds the `rotary_emb.inv_freq` buffers that older transformers saved
    in `.bin` checkpoints (default: only for `.bin` shards)."""
    import torch
    from safetensors.torch import save_file

    out_dir, tokenizer_model = Path(out_dir), Path(tokenizer_model)
    config = dict(
        config or {**DEFAULT_REFERENCE_CONFIG, "vocab_size": _vocab_size(tokenizer_model)}
    )
    dtype = getattr(torch, config.get("torch_dtype", "float32"))
    with_buffers = rotary_buffers if rotary_buffers is not None else shard_format == "bin"
    tensors = {}
    typed = HfLlamaConfig.from_dict(config)
    for name, tensor in _random_tensors(hf_llama_tensor_shapes(typed), seed, dtype):
        tensors[name] = tensor
        if with_buffers and name.endswith(".post_attention_layernorm.weight"):
            layer = name.removesuffix(".post_attention_layernorm.weight")
            tensors[f"{layer}.self_attn.rotary_emb.inv_freq"] = _inv_freq(typed)
    shard_names, index_name = _shard_names(n_shards, shard_format)
    names = list(tensors)
    per_shard = -(-len(names) // n_shards)
    weight_map = {}
    for shard, shard_name in enumerate(shard_names):
        chunk = {n: tensors[n] for n in names[shard * per_shard : (shard + 1) * per_shard]}
        weight_map.update(dict.fromkeys(chunk, shard_name))
        if shard_format == "bin":
            _torch_save(chunk, out_dir / shard_name)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_file(chunk, out_dir / shard_name, metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(out_dir / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json", REFERENCE_GENERATION_CONFIG)
    _copy_tokenizer(tokenizer_model, out_dir / "tokenizer.model")
    _write_hf_tokenizer_files(tokenizer_model, out_dir)
    return out_dir


def write_model_folder(
    root: str | Path,
    architecture: MetaParams | HfLlamaConfig,
    *,
    seed: int = 0,
    dtype: str = "float16",
) -> ModelPaths:
    """A model folder as the storage holds one (`configs/params.json` or
    `configs/config.json`, `safetensors/model.safetensors`) with random weights, written
    tensor by tensor: any size, in memory one tensor at a time. No tokenizer: the loaders
    check one only when it is there."""
    import torch

    from weighted_mtp.models.safetensors_stream import TensorSpec, write_safetensors

    root = Path(root)
    paths = ModelPaths(root.name, root)
    if isinstance(architecture, MetaParams):
        shapes = meta_tensor_shapes(architecture)
        write_json(paths.params, architecture.to_dict())
    else:
        shapes = hf_llama_tensor_shapes(architecture)
        write_json(paths.hf_config, architecture.to_dict())
    paths.safetensors_dir.mkdir(parents=True, exist_ok=True)
    specs = [TensorSpec.of(name, dtype, shape) for name, shape in shapes.items()]
    tensors = _random_tensors(shapes, seed, getattr(torch, dtype))
    write_safetensors(paths.weights, specs, tensors, {"format": "pt"})
    return paths
