from __future__ import annotations

import json

import pytest
import yaml

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.models.metadata import (
    adapter_config,
    build_metadata,
    read_adapter_config,
    read_metadata,
    tokenizer_entry,
    weights_entry,
    write_meta_configs,
    write_metadata,
)
from weighted_mtp.models.tokenizer import tokenizer_facts

SHA = "ab" * 32
META_7B = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "vocab_size": 32000,
    "multiple_of": 256,
    "ffn_dim_multiplier": 1.0,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "n_future_tokens": 4,
}


def _metadata(layout, sp_model_path, **changes):
    paths = layout.model("meta-llama-mtp")
    fields = dict(
        name="meta-llama-mtp",
        format="meta-mtp",
        dtype="float16",
        source_dtype="bfloat16",
        parameter_count=123,
        weights=weights_entry(paths, 1000, SHA),
        tokenizer=tokenizer_entry(paths, SHA, tokenizer_facts(sp_model_path)),
        source={
            "repo": "facebook/multi-token-prediction",
            "revision": "main",
            "files": {"7B_1T_4/consolidated.pth": SHA},
        },
    )
    return build_metadata(**{**fields, **changes})


def test_metadata_has_the_agreed_fields_and_round_trips(layout, sp_model_path):
    metadata = _metadata(layout, sp_model_path)
    assert metadata["weights"]["path"] == "safetensors/model.safetensors"
    assert metadata["tokenizer"]["path"] == "tokenizer/tokenizer.model"
    assert metadata["tokenizer"]["vocab_size"] == 8320
    assert metadata["tokenizer_shared_with"] is None
    assert metadata["created_at"].endswith("+00:00")
    path = layout.model("meta-llama-mtp").metadata
    write_metadata(path, metadata)
    typed = read_metadata(path)
    assert typed.raw == metadata
    assert typed.weights.path == "safetensors/model.safetensors"
    assert typed.tokenizer.vocab_size == 8320 and typed.tokenizer_trimmed is None


def test_micro_metadata_needs_the_micro_fields(layout, sp_model_path):
    with pytest.raises(WmtpError, match="target_device"):
        _metadata(
            layout,
            sp_model_path,
            name="micro-mtp",
            source={"model": "meta-llama-mtp", "sha256": None},
        )


def test_a_broken_field_is_named(layout, sp_model_path, tmp_path):
    metadata = _metadata(layout, sp_model_path)
    metadata["weights"]["sha256"] = "xyz"
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(metadata))
    with pytest.raises(WmtpError, match="weights/sha256"):
        read_metadata(path)


def test_adapter_config_uses_llamas_hidden_size_rule_for_the_7b():
    config = adapter_config(MetaParams.from_dict(META_7B), "float16")
    assert config["intermediate_size"] == 11008
    assert config["n_kv_heads"] == 32
    assert config["n_future_tokens"] == 4
    assert config["rope_theta"] == 10000.0
    assert config["dtype"] == "float16"


def test_meta_configs_copy_params_byte_for_byte(layout, tmp_path):
    source = tmp_path / "params.json"
    source.write_bytes(json.dumps(META_7B).encode())  # not the project's JSON style
    paths = layout.model("meta-llama-mtp")
    write_meta_configs(paths, MetaParams.from_dict(META_7B), "bfloat16", params_source=source)
    assert paths.params.read_bytes() == source.read_bytes()
    adapter = read_adapter_config(paths.adapter_config)
    assert adapter == yaml.safe_load(paths.adapter_config.read_text())
    assert adapter["dtype"] == "bfloat16"
    assert adapter["dim"] == 4096
