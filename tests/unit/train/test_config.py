"""Typed configuration: packaged YAML, --set with type checks, one-line errors."""

from __future__ import annotations

import pytest

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.train.config import (
    TrainConfig,
    config_yaml,
    load_config,
    parse_set,
    read_run_config,
    with_overrides,
)


def test_packaged_configs_load_and_validate():
    big, micro = load_config(None, micro=False), load_config(None, micro=True)
    for config in (big, micro):
        config.validate("packaged")
    assert big.model == "meta-llama-mtp" and big.lora.enabled and big.lora.r == 64
    assert big.lora.targets == ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    assert (big.lr, big.beta2, big.min_lr_ratio, big.seq_len) == (1e-4, 0.95, 0.005, 2048)
    assert micro.model == "micro-mtp" and micro.small and not micro.lora.enabled


def test_set_overrides_are_typed(tmp_path):
    config = with_overrides(
        TrainConfig(),
        dict(parse_set(s) for s in ["lr=1e-3", "lora.r=8", "lora.enabled=true", "small=false"]),
        "--set",
    )
    assert (config.lr, config.lora.r, config.lora.enabled, config.small) == (1e-3, 8, True, False)
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(config))
    assert read_run_config(saved) == config


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("foo=1", "unknown config key 'foo'"),
        ("seqlen=3", "did you mean 'seq_len'"),
        ("lora.rr=3", "did you mean 'lora.r'"),
        ("lr=fast", "config key 'lr' wants float, got 'fast'"),
        ("batch_size=2.5", "config key 'batch_size' wants int"),
        ("small=1", "config key 'small' wants bool"),
        ("normalize=mean", "wants 'count' | 'weight' | 'selected'"),
        ("lora=3", "wants a mapping"),
    ],
)
def test_bad_overrides_are_one_line(item, message):
    with pytest.raises(WmtpError, match=message) as error:
        with_overrides(TrainConfig(), dict([parse_set(item)]), "--set")
    assert "\n" not in error.value.line()


def test_set_without_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="not key=value"):
        parse_set("lr")


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1.0e-4\nwarmup: 3\n")
    with pytest.raises(WmtpError, match=r"unknown config key 'warmup'.*bad\.yaml"):
        load_config(bad, micro=True)
    bad.write_text("lr: [1\n")
    with pytest.raises(WmtpError, match="not valid YAML"):
        load_config(bad, micro=True)


def test_values_are_checked_for_meaning():
    with pytest.raises(WmtpError, match="warmup_ratio"):
        with_overrides(TrainConfig(), {"warmup_ratio": 1.5}, "x").validate("x")
    with pytest.raises(WmtpError, match=r"final_save adapter needs lora\.enabled"):
        with_overrides(TrainConfig(), {"final_save": "adapter"}, "x").validate("x")
