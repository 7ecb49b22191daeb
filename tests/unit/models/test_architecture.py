import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams, hf_llama_tensor_shapes

HF_CONFIG = {
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 100,
    "num_hidden_layers": 2,
}


def test_the_7b_params_give_llamas_feed_forward_size():
    params = MetaParams.from_dict(
        {"dim": 4096, "n_layers": 32, "n_heads": 32, "vocab_size": -1, "n_future_tokens": 4}
    )
    assert params.intermediate_size == 11008 and params.n_trunk_layers == 28


@pytest.mark.parametrize(
    ("field", "value"),
    [("dim", "64"), ("n_heads", 0), ("n_layers", 2.5), ("n_kv_heads", -1), ("vocab_size", "100")],
)
def test_malformed_params_are_one_clear_error(field, value):
    data = {"dim": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 100, field: value}
    with pytest.raises(WmtpError, match=f"{field} must be"):
        MetaParams.from_dict(data)


def test_hf_shapes_follow_the_config():
    shapes = hf_llama_tensor_shapes(
        HfLlamaConfig.from_dict({**HF_CONFIG, "num_key_value_heads": 1})
    )
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (32, 64)
    assert shapes["lm_head.weight"] == (100, 64)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "not a JSON object"),
        ({k: v for k, v in HF_CONFIG.items() if k != "vocab_size"}, "lacks vocab_size"),
        ({**HF_CONFIG, "num_attention_heads": 0}, "num_attention_heads must be a positive"),
        ({**HF_CONFIG, "hidden_size": "64"}, "hidden_size must be a positive"),
        ({**HF_CONFIG, "head_dim": 1.5}, "head_dim must be a positive"),
    ],
)
def test_malformed_hf_configs_are_one_clear_error(config, message):
    with pytest.raises(WmtpError, match=message):
        HfLlamaConfig.from_dict(config)


def test_hf_config_round_trips_every_field_in_order():
    upstream = {"architectures": ["LlamaForCausalLM"], **HF_CONFIG, "torch_dtype": "float32"}
    config = HfLlamaConfig.from_dict(upstream)
    assert list(config.to_dict().items()) == list(upstream.items())
    assert config.head_dim == HF_CONFIG["hidden_size"] // HF_CONFIG["num_attention_heads"]
    assert config.rope_theta == 10000.0  # Llama's default when the file does not say
    changed = config.updated(vocab_size=7, torch_dtype="float16").to_dict()
    assert changed["vocab_size"] == 7 and changed["torch_dtype"] == "float16"
    assert list(changed) == list(upstream)
