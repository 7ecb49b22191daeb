from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from weighted_mtp.models.architecture import (
    HfLlamaConfig,
    MetaParams,
    hf_llama_tensor_shapes,
    meta_tensor_shapes,
)
from weighted_mtp.synthetic.model_mirrors import write_meta_mirror, write_reference_mirror

TINY = {
    "dim": 64,
    "n_layers": 3,
    "n_heads": 2,
    "vocab_size": 8320,
    "n_future_tokens": 2,
    "multiple_of": 32,
}


def _shapes(tensors):
    return {name: tuple(t.shape) for name, t in tensors.items()}


def test_meta_mirror_has_the_upstream_layout_and_names(tmp_path, sp_model_path):
    out = write_meta_mirror(tmp_path, tokenizer_model=sp_model_path, params=TINY)
    state = torch.load(out / "7B_1T_4" / "consolidated.pth", weights_only=True, mmap=True)
    params = MetaParams.from_file(out / "7B_1T_4" / "params.json")
    assert _shapes(state) == meta_tensor_shapes(params)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert (out / "tokenizer.model").read_bytes() == sp_model_path.read_bytes()


def test_meta_mirror_defaults_are_at_least_micro_size_and_small(tmp_path, sp_model_path):
    out = write_meta_mirror(tmp_path, tokenizer_model=sp_model_path)
    params = MetaParams.from_file(out / "7B_1T_4" / "params.json")
    assert params.dim >= 512 and params.n_heads == 8 and params.n_layers >= 4
    assert params.vocab_size == 8320
    assert (out / "7B_1T_4" / "consolidated.pth").stat().st_size < 100e6


def test_reference_mirror_shards_cover_the_index(tmp_path, sp_model_path):
    folder = write_reference_mirror(
        tmp_path, tokenizer_model=sp_model_path, n_shards=3, shard_format="safetensors"
    )
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(folder / shard))
    assert _shapes(tensors) == hf_llama_tensor_shapes(HfLlamaConfig.from_dict(config))
    assert set(index["weight_map"]) == set(tensors)
    assert sum((folder / s).stat().st_size for s in set(index["weight_map"].values())) < 100e6
    assert (folder / "tokenizer.model").read_bytes() == sp_model_path.read_bytes()


def test_reference_mirror_has_sheared_llamas_root_files(tmp_path, sp_model_path):
    from transformers import AutoTokenizer

    out = write_reference_mirror(tmp_path, tokenizer_model=sp_model_path)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not any(p.is_dir() for p in out.iterdir())  # no invented sub-folders
    fast = AutoTokenizer.from_pretrained(out)
    assert fast.is_fast and len(fast) == 8320


def test_bin_reference_mirror_keeps_old_rotary_buffers(tmp_path, sp_model_path):
    config = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 8320,
        "rope_theta": 500.0,
    }
    out = write_reference_mirror(tmp_path, tokenizer_model=sp_model_path, config=config)
    shard = out / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    inv_freq = state["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert torch.allclose(inv_freq, 1 / 500.0 ** (torch.arange(0, 32, 2) / 32))
