"""Typed configuration: packaged YAML, --set with type checks, one-line errors."""

from __future__ import annotations

import pytest

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.train.config import (
    TrainConfig,
    build_config,
    config_yaml,
    load_config,
    parse_set,
    read_run_config,
    validate_for_world,
    with_overrides,
    with_settings,
)


def test_packaged_configs_load_and_validate():
    big, micro = load_config(None, micro=False), load_config(None, micro=True)
    assert big.model == "meta-llama-mtp" and big.lora.enabled and big.lora.r == 64
    assert big.lora.targets == ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    assert (big.lr, big.beta2, big.min_lr_ratio, big.seq_len) == (1e-4, 0.95, 0.005, 2048)
    assert micro.model == "micro-mtp" and micro.small and not micro.lora.enabled


def test_set_overrides_are_typed(tmp_path):
    items = ["lr=1e-3", "lora.r=8", "lora.enabled=true", "small=false"]
    config = with_settings(TrainConfig(), [parse_set(s) for s in items])
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
        with_settings(TrainConfig(), [parse_set(item)])
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
        with_overrides(TrainConfig(), {"warmup_ratio": 1.5}, "x")
    with pytest.raises(WmtpError, match=r"'final_save' adapter needs lora\.enabled"):
        with_overrides(TrainConfig(), {"final_save": "adapter"}, "x")


@pytest.mark.parametrize(
    "item", ["lr=nan", "lr=inf", "lr=-.inf", "lr=.NaN", "rho1.kappa=nan", "rho1.kappa=.inf"]
)
def test_nan_and_infinite_values_are_refused_up_front(item):
    key = item.partition("=")[0]
    with pytest.raises(WmtpError, match=f"config key '{key}' must be a finite number"):
        with_settings(TrainConfig(), [parse_set(item)])


def test_a_nan_in_a_config_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: .nan\n")
    with pytest.raises(WmtpError, match=r"config key 'lr' must be a finite number") as error:
        load_config(bad, micro=True)
    assert "bad.yaml" in error.value.line()


def test_an_error_names_the_key_as_the_user_wrote_it():
    from weighted_mtp.train.config import Setting

    with pytest.raises(WmtpError, match=r"^--kappa must be in \(0, 1\], not 1\.5"):
        build_config("rho1", small=True, settings=[Setting("rho1.kappa", 1.5, "--kappa")])
    with pytest.raises(WmtpError, match=r"^config key 'rho1.kappa' must be in \(0, 1\]"):
        build_config("rho1", small=True, settings=[parse_set("rho1.kappa=1.5")])
    with pytest.raises(WmtpError, match=r"^--kappa must be a finite number, not nan"):
        build_config("rho1", small=True, settings=[Setting("rho1.kappa", float("nan"), "--kappa")])
    with pytest.raises(WmtpError, match=r"^--score wants 'signed' \| 'absolute', got 'squared'"):
        build_config("rho1", small=True, settings=[Setting("rho1.score", "squared", "--score")])


@pytest.mark.parametrize("kappa", [0.0, -0.5, 1.01])
def test_kappa_outside_zero_one_is_one_clear_error(kappa):
    with pytest.raises(WmtpError, match=r"config key 'rho1.kappa' must be in \(0, 1\]"):
        with_overrides(TrainConfig(), {"rho1.kappa": kappa}, "x")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gamma", 1.5),
        ("lam", -0.1),
        ("beta", 0.0),
        ("w_min", 0.0),
        ("w_max", 0.05),
        ("momentum", 0.0),
    ],
)
def test_bad_verifiable_critic_settings_are_one_clear_error(key, value):
    with pytest.raises(WmtpError, match=f"config key 'critic.{key}' must be"):
        with_overrides(TrainConfig(), {f"critic.{key}": value}, "x")


def test_the_global_batch_must_split_over_the_ranks():
    config = with_overrides(TrainConfig(), {"batch_size": 8, "micro_batch_size": 2}, "x")
    validate_for_world(config, 4)
    with pytest.raises(WmtpError, match="batch_size 8 is not a multiple of micro_batch_size 2 x 3"):
        validate_for_world(config, 3)
    with pytest.raises(
        WmtpError,
        match=r"config key 'batch_size' must be a multiple of micro_batch_size \(4\), not 6",
    ):
        with_overrides(TrainConfig(), {"batch_size": 6, "micro_batch_size": 4}, "x")


def test_packaged_files_state_only_what_they_change():
    """Each default lives once, in `TrainConfig`: no packaged file restates a value of the
    config it is applied over (the defaults, or the Baseline config of its size)."""
    from importlib import resources

    import yaml

    from weighted_mtp.train.config import SUITE_SMALL, overlay_file
    from weighted_mtp.train.experiments import EXPERIMENTS

    def restated(base: TrainConfig, name: str) -> list[str]:
        text = resources.files("weighted_mtp.train").joinpath("configs", name).read_text()
        flat = {}
        for key, value in yaml.safe_load(text).items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            flat |= {f"{key}.{k}" if k else key: v for k, v in items}
        over = with_overrides(base, flat, name)
        return [k for k in flat if value_at(base, k) == value_at(over, k)]

    def value_at(config: TrainConfig, key: str) -> object:
        section, _, leaf = key.rpartition(".")
        return getattr(getattr(config, section) if section else config, leaf)

    for small in (True, False):
        assert restated(TrainConfig(), overlay_file("baseline", small)) == []
        base = load_config(None, micro=small)
        for name in EXPERIMENTS:
            if name != "baseline":
                assert restated(base, overlay_file(name, small)) == [], name
    assert restated(load_config(None, micro=True), SUITE_SMALL) == []


def test_a_config_is_checked_when_it_is_made():
    """No config exists with a value out of its bounds: constructing one is the check."""
    with pytest.raises(WmtpError, match=r"config key 'critic.w_max' must be >= critic.w_min"):
        TrainConfig(critic={"w_min": 2.0, "w_max": 1.0})
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig(lr=0.0)


@pytest.mark.parametrize("key", ["n_future", "max_steps", "eval_batches"])
def test_unset_is_none_and_zero_is_refused(key):
    """`None` means "as the model, the epochs or the split give"; no zero stands for it."""
    assert getattr(TrainConfig(), key) is None
    with pytest.raises(WmtpError, match=f"config key '{key}' must be positive, not 0"):
        with_settings(TrainConfig(), [parse_set(f"{key}=0")])
    assert with_settings(TrainConfig(), [parse_set(f"{key}=null")]) == TrainConfig()


def test_the_unset_values_are_resolved_where_they_are_known():
    config = TrainConfig()
    assert (config.heads(4), config.total_steps(7)) == (4, 7)
    config = with_settings(config, [parse_set(s) for s in ["n_future=2", "max_steps=3"]])
    assert (config.heads(4), config.total_steps(7)) == (2, 3)
    assert with_settings(TrainConfig(), [parse_set("epochs=3")]).total_steps(7) == 21


def test_a_run_saved_with_zero_for_unset_still_reads(tmp_path):
    """Runs saved before `n_future`, `max_steps` and `eval_batches` could be unset wrote 0;
    their config.yaml reads as unset (a new config file with 0 is refused)."""
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(TrainConfig()).replace("n_future: null", "n_future: 0"))
    assert "n_future: 0" in saved.read_text()
    assert read_run_config(saved) == TrainConfig()
    with pytest.raises(WmtpError, match="config key 'n_future' must be positive, not 0"):
        load_config(saved, micro=True)
