"""Typed training configuration: YAML files shipped in the package, `--set key=value`.

`TrainConfig` is the whole of a run's configuration; the effective one is saved as the run's
`config.yaml`, so a run can be repeated or resumed from it. Values are checked against the
dataclass's types (an unknown key or a wrong type is one clear error naming the source) and
then against their meaning (`TrainConfig.validate`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from weighted_mtp.assets import TRAIN_DATASET, TRAIN_MODEL
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.train.lora import LoraSettings
from weighted_mtp.train.weighted_config import CriticConfig, FrozenConfig, Rho1Config
from weighted_mtp.train.weighting import Normalize

PRECISIONS = ("auto", "bf16", "fp32")
FINAL_SAVES = ("model", "adapter", "merged", "none")
PACKAGED = {"7b": "baseline_7b.yaml", "micro": "baseline_micro.yaml"}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sizes count sequences; `batch_size` is the GLOBAL batch per
    optimizer step (all ranks and accumulation steps together)."""

    experiment: str = "baseline"
    model: str = TRAIN_MODEL  # a storage model name or a model folder
    data: str = TRAIN_DATASET
    small: bool = False  # datasets_local_small/<data>_small instead of the processed splits
    correct_only: bool = True  # train on records with metadata.is_correct only
    seq_len: int = 2048  # longest sequence allowed (BOS + prompt + response + EOS)
    n_future: int = 0  # heads trained: 1 = next token only; 0 = all of the model's heads
    batch_size: int = 32
    micro_batch_size: int = 1  # per rank and forward pass
    epochs: int = 1
    max_steps: int = 0  # 0 = as many as `epochs` epochs give
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.005
    clip_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 42
    normalize: Normalize = "count"
    naive_heads: bool = False  # all heads' logits at once (the oracle), not one at a time
    precision: str = "auto"  # auto: bf16 autocast where the device supports it, else fp32
    eval_every: int = 100  # steps between validation losses; 0 = only at the end
    eval_batches: int = 0  # validation batches per evaluation; 0 = the whole split
    checkpoint_every: int = 100  # 0 = only at the end (and at --stop-at)
    keep_checkpoints: int = 2
    final_save: str = "model"  # model (full weights), adapter, merged (LoRA), none
    lora: LoraSettings = field(default_factory=LoraSettings)
    critic: CriticConfig = field(default_factory=CriticConfig)
    rho1: Rho1Config = field(default_factory=Rho1Config)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)

    def validate(self, source: str) -> None:
        def fail(what: str) -> None:
            raise WmtpError(f"config: {what}", path=source)

        positive = ("seq_len", "batch_size", "micro_batch_size", "epochs", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("n_future", "max_steps", "eval_every", "eval_batches", "checkpoint_every"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            fail("lr must be positive and weight_decay >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            fail("beta1 and beta2 must be in [0, 1)")
        if not (0 <= self.warmup_ratio < 1 and 0 <= self.min_lr_ratio <= 1):
            fail("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.clip_grad_norm < 0:
            fail("clip_grad_norm must be >= 0")
        if self.frozen.shard_min_mib < 0:
            fail("frozen.shard_min_mib must be >= 0")
        choices = {
            "normalize": ("count", "weight", "selected"),
            "precision": PRECISIONS,
            "final_save": FINAL_SAVES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.final_save in ("adapter", "merged") and not self.lora.enabled:
            fail(f"final_save {self.final_save} needs lora.enabled")
        if self.lora.enabled and (self.lora.r <= 0 or self.lora.alpha <= 0):
            fail("lora.r and lora.alpha must be positive")
        if not 0 <= self.lora.dropout < 1 or not self.lora.targets:
            fail("lora.dropout must be in [0, 1) and lora.targets not empty")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora"]["targets"] = list(self.lora.targets)
        return data


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """`value` as type `hint`, or one error naming the key and the expected type."""
    origin = get_origin(hint)
    if origin is typing.Literal:
        if value in get_args(hint):
            return value
    elif origin is tuple:
        item = get_args(hint)[0]
        if isinstance(value, list | tuple):
            return tuple(_coerce(v, item, key, source) for v in value)
    elif origin in (typing.Union, types.UnionType):
        for option in get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                return _coerce(value, option, key, source)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    expected = (
        " | ".join(repr(a) for a in get_args(hint))
        if origin is typing.Literal
        else _type_name(hint)
    )
    raise WmtpError(
        f"config key {key!r} wants {expected}, got {value!r} ({type(value).__name__})",
        path=source,
    )


def _unknown(key: str, known: list[str], source: str) -> WmtpError:
    prefix, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = (
        f"did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"
        if close
        else f"known keys: {', '.join(known)}"
    )
    return WmtpError(f"unknown config key {key!r}", path=source, hint=hint)


def _merge(cls: type, base: Any, updates: dict[str, Any], source: str, prefix: str = "") -> Any:
    """A copy of dataclass `base` with `updates` (nested dicts for nested dataclasses)."""
    hints = get_type_hints(cls)
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise _unknown(full, list(hints), source)
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise WmtpError(f"config key {full!r} wants a mapping of its fields", path=source)
            changes[key] = _merge(hint, getattr(base, key), value, source, f"{full}.")
        else:
            changes[key] = _coerce(value, hint, full, source)
    return dataclasses.replace(base, **changes)


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise WmtpError(f"config is not valid YAML{where}", path=source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WmtpError("config must be a YAML mapping of keys to values", path=source)
    return data


def packaged_config(name: str) -> str:
    """The text of a config shipped in `weighted_mtp/train/configs/`."""
    return resources.files("weighted_mtp.train").joinpath("configs", PACKAGED[name]).read_text()


def load_config(path: Path | None, *, micro: bool) -> TrainConfig:
    """`path`'s config, or the packaged one (micro or 7B), over the dataclass defaults."""
    if path is None:
        key = "micro" if micro else "7b"
        return _merge(
            TrainConfig, TrainConfig(), _read_yaml(packaged_config(key), key), PACKAGED[key]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WmtpError(f"cannot read config: {exc.strerror}", path=path) from None
    return _merge(TrainConfig, TrainConfig(), _read_yaml(text, str(path)), str(path))


def with_packaged(config: TrainConfig, name: str) -> TrainConfig:
    """`config` under the keys of the packaged `configs/<name>` (an experiment's differences
    from the Baseline config, e.g. `verifiable.yaml`)."""
    text = resources.files("weighted_mtp.train").joinpath("configs", name).read_text()
    return _merge(TrainConfig, config, _read_yaml(text, name), name)


def parse_set(item: str) -> tuple[str, Any]:
    """`key=value` with value read as YAML (`lr=3e-4`, `lora.enabled=true`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r} is not key=value", hint="for example --set lr=3e-4")
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def with_overrides(config: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Apply dotted `key: value` overrides, type-checked like a config file."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise _unknown(key, list(get_type_hints(TrainConfig)), source)
        node[leaf] = value
    return _merge(TrainConfig, config, nested, source)


def config_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def read_run_config(path: Path) -> TrainConfig:
    """A run's saved config.yaml (for --resume)."""
    return load_config(path, micro=True)
