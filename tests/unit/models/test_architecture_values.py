"""Non-physical configs (rope_theta or norm_eps not positive and finite, NaN anywhere, sizes
beyond any real model) are refused before anything is listed, converted or verified."""

import json
import math

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams

META = {"dim": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 100}
HF = {
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 100,
    "num_hidden_layers": 2,
}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rope_theta", 0, "rope_theta must be a positive finite number"),
        ("rope_theta", -10000.0, "rope_theta must be a positive finite number"),
        ("rope_theta", math.inf, "rope_theta is not a finite number"),
        ("rope_theta", "10000", "rope_theta must be a positive finite number"),
        ("rope_theta", True, "rope_theta must be a positive finite number"),
        ("norm_eps", 0.0, "norm_eps must be a positive finite number below 1"),
        ("norm_eps", -1e-5, "norm_eps must be"),
        ("norm_eps", 2.0, "norm_eps must be"),
        ("norm_eps", math.nan, "norm_eps is not a finite number"),
        ("ffn_dim_multiplier", -1.3, "ffn_dim_multiplier must be"),
        ("ffn_dim_multiplier", math.nan, "ffn_dim_multiplier is not a finite number"),
        ("n_layers", 10**6, "n_layers 1000000 is beyond the sane maximum 1024"),
        ("dim", 1 << 20, "dim 1048576 is beyond the sane maximum"),
        ("n_heads", 4096, "n_heads 4096 is beyond"),
        ("vocab_size", 10**9, "vocab_size 1000000000 is beyond"),
        ("max_seq_len", 1 << 40, "max_seq_len .* is beyond"),
    ],
)
def test_non_physical_params_are_refused(field, value, message):
    data = {**META, field: value}
    if field == "n_heads":
        data["dim"] = 4096 * 2
    with pytest.raises(WmtpError, match=message):
        MetaParams.from_dict(data)


def test_physical_params_still_pass():
    params = MetaParams.from_dict({**META, "rope_theta": 500000.0, "norm_eps": 1e-6})
    assert params.rope_theta == 500000.0 and params.norm_eps == 1e-6


def test_a_million_layers_are_refused_before_tensors_are_listed(monkeypatch):
    import weighted_mtp.models.architecture as architecture

    def listing(*args):
        raise AssertionError("expected tensors listed for a refused config")

    monkeypatch.setattr(architecture, "_meta_block", listing)
    with pytest.raises(WmtpError, match="n_layers"):
        MetaParams.from_dict({**META, "n_layers": 10**6})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rope_theta": -1.0}, "rope_theta must be a positive finite number"),
        ({"rope_theta": None}, "rope_theta must be a positive finite number"),
        ({"rms_norm_eps": 0}, "rms_norm_eps must be a positive finite number below 1"),
        ({"rms_norm_eps": math.inf}, "rms_norm_eps is not a finite number"),
        ({"rope_scaling": {"factor": math.nan}}, "rope_scaling.factor is not a finite number"),
        ({"num_hidden_layers": 10**6}, "num_hidden_layers 1000000 is beyond"),
        ({"intermediate_size": 1 << 30}, "intermediate_size .* is beyond"),
        ({"num_key_value_heads": 5000}, "num_key_value_heads 5000 is beyond"),
    ],
)
def test_non_physical_hf_configs_are_refused(changes, message):
    with pytest.raises(WmtpError, match=f"config.json is not physical: {message}"):
        HfLlamaConfig.from_dict({**HF, **changes})


def test_a_params_file_with_a_nan_literal_is_refused(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps(META)[:-1] + ', "rope_theta": NaN}')
    with pytest.raises(WmtpError, match=r"params\.json is not standard JSON"):
        MetaParams.from_file(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rope_theta": -1.0}, "rope_theta must be a positive finite number"),
        ({"norm_eps": 0.0}, "norm_eps must be a positive finite number"),
        ({"n_layers": 5000}, "n_layers 5000 is beyond"),
    ],
)
def test_convert_refuses_them_before_writing(layout, meta_raw, changes, message):
    from weighted_mtp.models.convert import convert_model

    params = layout.model("meta-llama-mtp").raw_params
    params.write_text(json.dumps({**json.loads(params.read_text()), **changes}))
    with pytest.raises(WmtpError, match=message):
        convert_model(layout, "meta-llama-mtp")
    assert not layout.model("meta-llama-mtp").weights.exists()


def test_convert_refuses_a_reference_config_with_a_bad_epsilon(layout, reference_raw):
    from weighted_mtp.models.convert import convert_model

    config = layout.model("ref-sheared-llama-2.7b").raw_hf_config
    config.write_text(json.dumps({**json.loads(config.read_text()), "rms_norm_eps": -1e-6}))
    with pytest.raises(WmtpError, match="rms_norm_eps must be a positive finite number"):
        convert_model(layout, "ref-sheared-llama-2.7b")


def test_verify_fails_a_converted_model_whose_params_are_not_physical(layout, meta_raw):
    from weighted_mtp.models.convert import convert_model
    from weighted_mtp.models.verify import verify_model

    convert_model(layout, "meta-llama-mtp")
    assert verify_model(layout, "meta-llama-mtp").ok
    params = layout.model("meta-llama-mtp").params
    params.write_text(json.dumps({**json.loads(params.read_text()), "rope_theta": -10000.0}))
    report = verify_model(layout, "meta-llama-mtp")
    failed = {c.name: c.detail for c in report.failures()}
    assert "rope_theta must be a positive finite number" in failed["configs agree"]
