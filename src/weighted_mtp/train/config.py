"""Typed training configuration: the one object every experiment is run from.

`TrainConfig` is the whole of a run's configuration, with typed sections (`lora`, `critic`,
`rho1`, `frozen`); each default is written once, in these dataclasses. A run's config is
built in one place (`build_config`): the packaged Baseline config of the size
(`configs/baseline_<size>.yaml`, or `--config FILE`), the experiment's overlay
(`configs/<experiment>_<size>.yaml`), the small suite's overlay inside `wmtp train suite
--small`, then the user's settings (`--set key=value` and the named options such as
`--kappa`). The effective config is saved as the run's `config.yaml`, so a run can be
repeated or resumed from it.

Values are checked here and nowhere else: their types while they are read (an unknown key,
a wrong type or a NaN/infinite number is one error), then their meaning (`validate`). An
error names the key as the user wrote it: `--kappa` for an option, `config key
'rho1.kappa'` for `--set` or a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from weighted_mtp.assets import TRAIN_DATASET, TRAIN_MODEL, TRAINING_RUNS
from weighted_mtp.errors import UsageError, WmtpError

Normalize = Literal["count", "weight", "selected"]
Precision = Literal["auto", "bf16", "fp32"]
ActivationCheckpointing = Literal["none", "blocks"]
FinalSave = Literal["model", "adapter", "merged", "none"]
Logger = Literal["jsonl", "tensorboard", "wandb", "mlflow"]
Objective = Literal["mc", "pairwise"]
Score = Literal["signed", "absolute"]
BLOCK_LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # Meta's names for a block's linears
SIZES = {True: "micro", False: "7b"}
SUITE_SMALL = "suite_micro.yaml"


@dataclass(frozen=True)
class LoraConfig:
    """LoRA as the 7B fine-tuning used it: r 64, alpha 128, dropout 0.05 on the block
    linears (Meta's names; mapped to transformers' for a Llama reference or critic)."""

    enabled: bool = False
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    targets: tuple[str, ...] = BLOCK_LINEARS


@dataclass(frozen=True)
class CriticConfig:
    """Stage 1 (`wmtp train critic`): objective and value-head width. Stage 2 (`wmtp train
    verifiable`): the critic run, and the advantage and weight hyperparameters of
    `advantages` (GAE γ and λ, AWR β, the weight clip, the whitening EMA)."""

    run: str = ""  # the critic's run folder (stage 2)
    objective: Objective = "mc"
    head_hidden: int = 256
    gamma: float = 1.0
    lam: float = 0.95
    beta: float = 1.0
    w_min: float = 0.1
    w_max: float = 3.0
    momentum: float = 0.1  # whitening EMA; the first 1/momentum updates average


@dataclass(frozen=True)
class Rho1Config:
    """Stage 2 (`wmtp train rho1`): the reference (a ref-tune run folder or a model) and the
    selection: the top κ of the targets by excess loss, signed or absolute."""

    reference: str = ""
    kappa: float = 0.6
    score: Score = "signed"


@dataclass(frozen=True)
class FrozenConfig:
    """Stage 2: how each rank holds the frozen critic / reference (`frozen:` in config.yaml).

    `shard`: under torchrun, `always` shards it with FSDP2 like the policy (per block, then
    the root), `never` keeps a full replica on every rank, and `auto` shards when its
    parameters in the scoring dtype exceed `shard_min_mib` (a replica that small costs less
    memory than its per-step all-gathers cost time). One process never shards.
    `dtype`: `auto` scores in the policy's compute dtype (bf16 where the trainer autocasts to
    bf16, float32 otherwise); `bf16` or `fp32` force one.
    """

    shard: Literal["auto", "always", "never"] = "auto"
    shard_min_mib: float = 1024.0
    dtype: Literal["auto", "bf16", "fp32"] = "auto"


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sizes count sequences; `batch_size` is the GLOBAL batch per
    optimizer step (all ranks and accumulation steps together)."""

    experiment: str = "baseline"  # a row of `train.experiments.EXPERIMENTS`
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
    precision: Precision = "auto"  # auto: bf16 autocast where the device supports it
    # blocks: each transformer block recomputes its activations in the backward
    activation_checkpointing: ActivationCheckpointing = "none"
    eval_every: int = 100  # steps between validation losses; 0 = only at the end
    eval_batches: int = 0  # validation batches per evaluation; 0 = the whole split
    checkpoint_every: int = 100  # 0 = only at the end (and at --stop-at)
    keep_checkpoints: int = 2
    final_save: FinalSave = "model"  # model (full weights), adapter, merged (LoRA), none
    logger: Logger = "jsonl"  # metrics.jsonl always; tensorboard, wandb or mlflow mirror it
    lora: LoraConfig = field(default_factory=LoraConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    rho1: Rho1Config = field(default_factory=Rho1Config)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora"]["targets"] = list(self.lora.targets)
        return data


# -- reading values ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One value the user gave: its dotted config key and how they wrote it (`--kappa` for
    a named option, the key itself for `--set` or a file)."""

    key: str
    value: Any
    given_as: str = ""

    @property
    def name(self) -> str:
        return self.given_as or f"config key {self.key!r}"


Names = Mapping[str, str]  # dotted key -> how the user wrote it


def key_name(key: str, names: Names) -> str:
    return names.get(key) or f"config key {key!r}"


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    """`value` as type `hint`, or one error naming the key and the expected type."""
    origin = get_origin(hint)
    if origin is typing.Literal:
        if value in get_args(hint):
            return value
    elif origin is tuple:
        item = get_args(hint)[0]
        if isinstance(value, list | tuple):
            return tuple(_coerce(v, item, name, source) for v in value)
    elif origin in (typing.Union, types.UnionType):
        for option in get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                return _coerce(value, option, name, source)
    elif hint is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                raise WmtpError(
                    f"{name} must be a finite number, not {value!r}",
                    path=source,
                    hint="NaN and infinity are not training settings",
                )
            return number
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
    raise WmtpError(f"{name} wants {expected}, got {value!r} ({type(value).__name__})", path=source)


def _unknown(key: str, known: list[str], source: str) -> WmtpError:
    prefix, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = (
        f"did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"
        if close
        else f"known keys: {', '.join(known)}"
    )
    return WmtpError(f"unknown config key {key!r}", path=source, hint=hint)


def _merge(
    cls: type, base: Any, updates: dict[str, Any], source: str, names: Names, prefix: str = ""
) -> Any:
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
                raise WmtpError(
                    f"{key_name(full, names)} wants a mapping of its fields", path=source
                )
            changes[key] = _merge(hint, getattr(base, key), value, source, names, f"{full}.")
        else:
            changes[key] = _coerce(value, hint, key_name(full, names), source)
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


def _packaged_text(name: str) -> str:
    return resources.files("weighted_mtp.train").joinpath("configs", name).read_text()


def overlay_file(experiment: str, small: bool) -> str:
    """The packaged file of an experiment at a size: `configs/<experiment>_<size>.yaml`."""
    return f"{experiment.replace('-', '_')}_{SIZES[small]}.yaml"


def with_packaged(config: TrainConfig, name: str) -> TrainConfig:
    """`config` under the keys of the packaged `configs/<name>`."""
    merged: TrainConfig = _merge(
        TrainConfig, config, _read_yaml(_packaged_text(name), name), name, {}
    )
    return merged


def load_config(path: Path | None, *, micro: bool) -> TrainConfig:
    """`path`'s config, or the packaged Baseline one (micro or 7B), over the defaults."""
    if path is None:
        return with_packaged(TrainConfig(), overlay_file("baseline", micro))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WmtpError(f"cannot read config: {exc.strerror}", path=path) from None
    loaded: TrainConfig = _merge(
        TrainConfig, TrainConfig(), _read_yaml(text, str(path)), str(path), {}
    )
    return loaded


def parse_set(item: str) -> Setting:
    """`--set key=value` with the value read as YAML (`lr=3e-4`, `lora.enabled=true`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r} is not key=value", hint="for example --set lr=3e-4")
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return Setting(key.strip(), value)


def with_overrides(
    config: TrainConfig, overrides: Mapping[str, Any], source: str, names: Names | None = None
) -> TrainConfig:
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
    merged: TrainConfig = _merge(TrainConfig, config, nested, source, names or {})
    return merged


def with_settings(config: TrainConfig, settings: Sequence[Setting]) -> TrainConfig:
    names = {s.key: s.given_as for s in settings if s.given_as}
    return with_overrides(config, {s.key: s.value for s in settings}, "options", names)


def build_config(
    experiment: str,
    *,
    small: bool,
    settings: Sequence[Setting] = (),
    file: Path | None = None,
    suite: bool = False,
) -> TrainConfig:
    """A new run's config, validated: the Baseline config of the size (or `file`), under
    the small suite's overlay (`suite`), the experiment's overlay, then `settings`."""
    if experiment not in TRAINING_RUNS:
        raise UsageError(
            f"unknown experiment {experiment!r}", hint=f"choose one of {', '.join(TRAINING_RUNS)}"
        )
    if file is not None:
        config = load_config(file, micro=small)
        config = dataclasses.replace(config, experiment=experiment)
    else:
        config = load_config(None, micro=small)
        if suite and small:
            config = with_packaged(config, SUITE_SMALL)
        if experiment != "baseline":
            config = with_packaged(config, overlay_file(experiment, small))
    config = with_settings(config, settings)
    validate(config, {s.key: s.given_as for s in settings if s.given_as})
    return config


def config_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def read_run_config(path: Path) -> TrainConfig:
    """A run's saved config.yaml (for --resume and for reading a finished run)."""
    config = load_config(path, micro=True)
    validate(config, {}, source=str(path))
    return config


# -- meaning ------------------------------------------------------------------------------


def _positive(x: Any) -> bool:
    return bool(x > 0)


def _not_negative(x: Any) -> bool:
    return bool(x >= 0)


def _fraction(x: Any) -> bool:
    return bool(0 <= x < 1)


def _unit(x: Any) -> bool:
    return bool(0 <= x <= 1)


Rule = tuple[str, Callable[[Any], bool], str]
RULES: tuple[Rule, ...] = (
    *((k, _positive, "must be positive") for k in ("seq_len", "batch_size", "micro_batch_size")),
    *((k, _positive, "must be positive") for k in ("epochs", "keep_checkpoints", "lr")),
    *(
        (k, _not_negative, "must be >= 0")
        for k in ("n_future", "max_steps", "eval_every", "eval_batches", "checkpoint_every")
    ),
    *((k, _not_negative, "must be >= 0") for k in ("weight_decay", "clip_grad_norm")),
    *((k, _fraction, "must be in [0, 1)") for k in ("beta1", "beta2", "warmup_ratio")),
    ("min_lr_ratio", _unit, "must be in [0, 1]"),
    ("lora.r", _positive, "must be positive"),
    ("lora.alpha", _positive, "must be positive"),
    ("lora.dropout", _fraction, "must be in [0, 1)"),
    ("lora.targets", bool, "must name at least one linear"),
    ("critic.head_hidden", _positive, "must be positive"),
    ("critic.gamma", _unit, "must be in [0, 1]"),
    ("critic.lam", _unit, "must be in [0, 1]"),
    ("critic.beta", _positive, "must be positive"),
    ("critic.w_min", _positive, "must be positive"),
    ("critic.momentum", lambda x: 0 < x <= 1, "must be in (0, 1]"),
    ("rho1.kappa", lambda x: 0 < x <= 1, "must be in (0, 1]"),
    ("frozen.shard_min_mib", _not_negative, "must be >= 0"),
)


def value_at(config: TrainConfig, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(config: TrainConfig, names: Names | None = None, source: str = "config") -> None:
    """Every value's meaning, or one error naming the first bad key as the user wrote it."""
    names = names or {}

    def fail(key: str, problem: str, hint: str | None = None) -> None:
        raise WmtpError(f"{key_name(key, names)} {problem}", path=source, hint=hint)

    if config.experiment not in TRAINING_RUNS:
        fail("experiment", f"must be one of {', '.join(TRAINING_RUNS)}")
    for key, holds, problem in RULES:
        value = value_at(config, key)
        if not holds(value):
            fail(key, f"{problem}, not {value!r}")
    if config.critic.w_max < config.critic.w_min:
        fail("critic.w_max", f"must be >= critic.w_min ({config.critic.w_min})")
    if config.batch_size % config.micro_batch_size:
        fail(
            "batch_size",
            f"must be a multiple of micro_batch_size ({config.micro_batch_size}), "
            f"not {config.batch_size}",
            hint="choose batch_size = micro_batch_size x ranks x accumulation steps",
        )
    if config.final_save in ("adapter", "merged") and not config.lora.enabled:
        fail(
            "final_save",
            f"{config.final_save} needs lora.enabled",
            hint="--set lora.enabled=true, or final_save model",
        )


def validate_for_world(config: TrainConfig, world: int) -> None:
    """The global batch splits evenly over `world` ranks of `micro_batch_size` sequences."""
    share = config.micro_batch_size * world
    if config.batch_size % share:
        raise WmtpError(
            f"batch_size {config.batch_size} is not a multiple of micro_batch_size "
            f"{config.micro_batch_size} x {world} rank(s)",
            hint="choose batch_size = micro_batch_size x ranks x accumulation steps",
        )


def validate_for_model(config: TrainConfig, context: int, heads: int, source: Path) -> None:
    """`seq_len` fits the model's context and `n_future` its heads."""
    if config.seq_len > context:
        raise WmtpError(
            f"seq_len {config.seq_len} is longer than the model's context {context}",
            path=source,
            hint=f"use --set seq_len={context} or less",
        )
    if config.n_future > heads:
        raise WmtpError(
            f"n_future {config.n_future} exceeds the model's {heads} heads",
            path=source,
            hint=f"use --n-future 1..{heads}",
        )
