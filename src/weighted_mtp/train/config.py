"""Typed training configuration: the one object every experiment is run from.

`TrainConfig` (pydantic; sections `lora`, `critic`, `rho1`, `frozen`) declares each key
once, as a field with its type, default, bounds, description (the docstring under it) and,
where a train command takes it by name, its `Option`. The options (`cli/train.py`), the docs
table and the JSON Schema (`config_docs.py`) are made from the fields. A config is checked
once, when it is made; an error names the key as the user wrote it (`--kappa`, or
`config key 'rho1.kappa'`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from weighted_mtp.assets import TRAIN_DATASET, TRAIN_MODEL, TRAINING_RUNS
from weighted_mtp.errors import UsageError, WmtpError

Normalize = Literal["count", "weight", "selected"]
Objective = Literal["mc", "pairwise"]
Score = Literal["signed", "absolute"]
BLOCK_LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # Meta's names for a block's linears
SUITE_SMALL = "suite_micro.yaml"
POLICY_RUNS = ("baseline", "verifiable", "rho1")  # the experiments that train the MTP policy
EVERY = (*TRAINING_RUNS, "suite")


@dataclass(frozen=True)
class Option:
    """A key the train commands take by name: `decls` as click takes them (`--kappa`,
    `--lora/--full`), the commands offering it (`wmtp train plan` offers every one), and
    what a one-way flag sets."""

    decls: str
    commands: tuple[str, ...] = TRAINING_RUNS
    flag_value: bool = True


def _number(value: Any) -> Any:
    """An int, or a string that reads as a number (YAML 1.1 reads 1e-3 as a string), as a
    float; NaN and infinity refused here, so that the error shows the value as written."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "not finite")
    return number


Float = Annotated[float, BeforeValidator(_number)]


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class LoraConfig(Section):
    """LoRA as the 7B fine-tuning used it: r 64, alpha 128, dropout 0.05 on the block
    linears (Meta's names; mapped to transformers' for a Llama reference or critic)."""

    enabled: Annotated[bool, Option("--lora/--full")] = False
    """LoRA instead of full fine-tuning"""
    r: int = Field(64, gt=0)
    """LoRA rank"""
    alpha: int = Field(128, gt=0)
    """LoRA alpha"""
    dropout: Float = Field(0.05, ge=0, lt=1)
    """LoRA dropout"""
    targets: tuple[str, ...] = Field(BLOCK_LINEARS, min_length=1, strict=False)
    """the block linears (Meta's names; a Llama reference or critic maps them to `q_proj`, ...)"""


class CriticConfig(Section):
    """Stage 1 (`wmtp train critic`): objective and value-head width. Stage 2 (`wmtp train
    verifiable`): the critic run, and the advantage and weight hyperparameters of
    `advantages` (GAE γ and λ, AWR β, the weight clip, the whitening EMA)."""

    run: Annotated[str, Option("--critic", ("verifiable",))] = ""
    """the critic's run folder (verifiable)"""
    objective: Annotated[Objective, Option("--objective", ("critic",))] = "mc"
    """`mc` (every position regresses to R) or `pairwise` (same-task pairs)"""
    head_hidden: int = Field(256, gt=0)
    """the value head's width"""
    gamma: Float = Field(1.0, ge=0, le=1)
    """GAE γ"""
    lam: Float = Field(0.95, ge=0, le=1)
    """GAE λ"""
    beta: Float = Field(1.0, gt=0)
    """AWR temperature β"""
    w_min: Float = Field(0.1, gt=0)
    """smallest weight"""
    w_max: Float = 3.0
    """largest weight, at least `w_min`"""
    momentum: Float = Field(0.1, gt=0, le=1)
    """whitening EMA (first 1/momentum average)"""


class Rho1Config(Section):
    """Stage 2 (`wmtp train rho1`): the reference (a ref-tune run folder or a model) and the
    selection: the top κ of the targets by excess loss, signed or absolute."""

    reference: Annotated[str, Option("--reference", ("rho1",))] = ""
    """a ref-tune run folder, a storage model or a model folder (rho1)"""
    kappa: Annotated[Float, Option("--kappa", ("rho1",))] = Field(0.6, gt=0, le=1)
    """fraction of the global batch's targets trained on"""
    score: Annotated[Score, Option("--score", ("rho1",))] = "signed"
    """select by the excess loss Δ (`signed`) or its size (`absolute`)"""


class FrozenConfig(Section):
    """Stage 2: how each rank holds the frozen critic / reference. One process never shards;
    a replica smaller than `shard_min_mib` costs less memory than its all-gathers cost time."""

    shard: Literal["auto", "always", "never"] = "auto"
    """under torchrun: `always` sharded (FSDP2), `never` (a replica), `auto` by size"""
    shard_min_mib: Float = Field(1024.0, ge=0)
    """`auto` shards a larger helper"""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """the helper's dtype: the policy's compute dtype, or `bf16`, `fp32`"""


class TrainConfig(Section):
    """One training run. Sizes count sequences; `batch_size` is the GLOBAL batch per
    optimizer step (all ranks and accumulation steps together)."""

    experiment: str = Field("baseline", json_schema_extra={"enum": list(TRAINING_RUNS)})
    """the row of the experiment table (set by the command)"""
    model: Annotated[str, Option("--model")] = TRAIN_MODEL
    """a storage model name or a model folder"""
    data: Annotated[str, Option("--data")] = TRAIN_DATASET
    """the dataset"""
    small: Annotated[bool, Option("--small", EVERY)] = False
    """the micro models, `datasets_local_small/<data>_small` and their packaged config"""
    correct_only: Annotated[bool, Option("--include-incorrect", ("verifiable",), False)] = True
    """train on records with `metadata.is_correct` only"""
    seq_len: int = Field(2048, gt=0)
    """longest sequence (BOS + prompt + response + EOS), at most the model's context"""
    n_future: Annotated[int | None, Option("--n-future", POLICY_RUNS)] = Field(None, gt=0)
    """heads trained (1 = next token only); unset: all of the model's"""
    batch_size: int = Field(32, gt=0)
    """GLOBAL batch: ranks × `micro_batch_size` × accumulation steps"""
    micro_batch_size: int = Field(1, gt=0)
    """sequences per rank and forward pass"""
    epochs: int = Field(1, gt=0)
    """epochs trained when `max_steps` is unset"""
    max_steps: Annotated[int | None, Option("--max-steps", EVERY)] = Field(None, gt=0)
    """optimizer steps; unset: as many as `epochs` give"""
    lr: Annotated[Float, Option("--lr", EVERY)] = Field(1e-4, gt=0)
    """peak learning rate (AdamW)"""
    beta1: Float = Field(0.9, ge=0, lt=1)
    """AdamW β1"""
    beta2: Float = Field(0.95, ge=0, lt=1)
    """AdamW β2"""
    weight_decay: Float = Field(0.01, ge=0)
    """AdamW weight decay"""
    warmup_ratio: Float = Field(0.03, ge=0, lt=1)
    """linear warmup over this fraction of the steps, then cosine"""
    min_lr_ratio: Float = Field(0.005, ge=0, le=1)
    """the cosine ends at `lr × min_lr_ratio`"""
    clip_grad_norm: Float = Field(1.0, ge=0)
    """gradient norm clip; 0 = none"""
    seed: Annotated[int, Option("--seed", EVERY)] = 42
    """data order, initialisation (LoRA, value head), dropout"""
    normalize: Normalize = "count"
    """what each head's weighted sum is divided by"""
    naive_heads: Annotated[bool, Option("--naive-heads", POLICY_RUNS)] = False
    """all heads' logits at once (the oracle), not one at a time"""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`: bf16 autocast where the GPU supports it"""
    activation_checkpointing: Literal["none", "blocks"] = "none"
    """`blocks`: recompute block activations in the backward ([memory plan](memory-plan.md))"""
    eval_every: int = Field(100, ge=0)
    """steps between validations; 0 = at the end"""
    eval_batches: int | None = Field(None, gt=0)
    """validation batches per validation; unset: the whole split"""
    checkpoint_every: int = Field(100, ge=0)
    """steps between checkpoints; 0 = at the end (and at `--stop-at`)"""
    keep_checkpoints: int = Field(2, gt=0)
    """checkpoints kept"""
    final_save: Literal["model", "adapter", "merged", "none"] = "model"
    """the policy's `final/`: `model`, `merged` (LoRA merged), `adapter`, `none`"""
    logger: Literal["jsonl", "tensorboard", "wandb", "mlflow"] = "jsonl"
    """`metrics.jsonl` only, or mirrored to one more logger"""
    lora: LoraConfig = LoraConfig()
    critic: CriticConfig = CriticConfig()
    rho1: Rho1Config = Rho1Config()
    frozen: FrozenConfig = FrozenConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.experiment not in TRAINING_RUNS:
            raise Invalid("experiment", f"must be one of {', '.join(TRAINING_RUNS)}")
        if self.critic.w_max < self.critic.w_min:
            raise Invalid("critic.w_max", f"must be >= critic.w_min ({self.critic.w_min})")
        if self.batch_size % self.micro_batch_size:
            raise Invalid(
                "batch_size",
                f"must be a multiple of micro_batch_size ({self.micro_batch_size}), "
                f"not {self.batch_size}",
                hint="choose batch_size = micro_batch_size x ranks x accumulation steps",
            )
        if self.final_save in ("adapter", "merged") and not self.lora.enabled:
            raise Invalid(
                "final_save",
                f"{self.final_save} needs lora.enabled",
                hint="--set lora.enabled=true, or final_save model",
            )
        return self

    def heads(self, model_heads: int) -> int:
        """The prediction heads trained on a model with `model_heads`."""
        return model_heads if self.n_future is None else self.n_future

    def total_steps(self, steps_per_epoch: int) -> int:
        """The optimizer steps planned when an epoch is `steps_per_epoch` steps."""
        return self.epochs * steps_per_epoch if self.max_steps is None else self.max_steps

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Invalid(WmtpError):
    """A key whose value contradicts another's; `with_overrides` names it as the user did."""

    def __init__(self, key: str, problem: str, hint: str | None = None) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"config key {key!r} {problem}", hint=hint)


def fields(model: type[Section] = TrainConfig, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every key of `model` (a section's dotted) and its field, in declaration order."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield from fields(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def option_of(field: FieldInfo) -> Option | None:
    return next((m for m in field.metadata if isinstance(m, Option)), None)


def bounds_text(field: FieldInfo) -> str:
    """The field's bounds in words: `positive`, `>= 0`, `in (0, 1]`; "" for none."""
    b = {
        k: getattr(m, k) for m in field.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)
    }
    low = [f"{'(' if k == 'gt' else '['}{b[k]:g}" for k in ("gt", "ge") if k in b]
    high = [f"{b[k]:g}{')' if k == 'lt' else ']'}" for k in ("lt", "le") if k in b]
    if low and high:
        return f"in {low[0]}, {high[0]}"
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return "positive" if b == {"gt": 0} else " ".join(f"{signs[k]} {v:g}" for k, v in b.items())


# -- building, and errors naming the key as the user wrote it ------------------------------


@dataclass(frozen=True)
class Setting:
    """One value the user gave: its dotted config key and how they wrote it (`--kappa` for
    a named option; unset for `--set` or a file, named `config key '...'`)."""

    key: str
    value: Any
    given_as: str = ""


def _error(error: ErrorDetails, source: str, names: Mapping[str, str]) -> WmtpError:
    """One pydantic error as one line naming the key as the user wrote it."""
    key = ".".join(part for part in error["loc"] if isinstance(part, str))  # no list indices
    name, kind, value = names.get(key) or f"config key {key!r}", error["type"], error["input"]
    if kind == "extra_forbidden":
        prefix, _, leaf = key.rpartition(".")
        section = TrainConfig.model_fields.get(prefix)  # sections are one level deep
        known = list((section.annotation if section else TrainConfig).model_fields)  # type: ignore[union-attr]
        close = [
            f"did you mean {(prefix + '.' if prefix else '') + c!r}?"
            for c in difflib.get_close_matches(leaf, known, n=1)
        ]
        hint = close[0] if close else f"known keys: {', '.join(known)}"
        return WmtpError(f"unknown config key {key!r}", path=source, hint=hint)
    field, hint = dict(fields()).get(key), "NaN and infinity are not training settings"
    if kind == "model_type":
        problem = "wants a mapping of its fields"
    elif kind == "finite_number":
        problem = f"must be a finite number, not {value!r}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = f"must be {bounds_text(field)}, not {value!r}"  # type: ignore[arg-type]
    elif kind == "too_short":
        problem = "must not be empty"
    else:  # literal_error, int_type, float_parsing, bool_type, string_type, tuple_type, ...
        simple = {"string": "str", "tuple": "a list"}.get(kind.split("_")[0], kind.split("_")[0])
        choices = get_args(field.annotation) if kind == "literal_error" and field else ()
        wanted = " | ".join(repr(c) for c in choices) or simple
        problem = f"wants {wanted}, got {value!r} ({type(value).__name__})"
    return WmtpError(
        f"{name} {problem}", path=source, hint=hint if kind == "finite_number" else None
    )


def _merged(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """`base` under `updates`: nested mappings or dotted keys (`lora.r`) for the sections."""
    out = dict(base)
    for key, value in updates.items():
        head, dot, rest = str(key).partition(".")
        value = {rest: value} if dot else value
        nested = isinstance(value, dict) and isinstance(out.get(head), dict)
        out[head] = _merged(out[head], value) if nested else value
    return out


def with_overrides(
    config: TrainConfig,
    overrides: Mapping[str, Any],
    source: str,
    names: Mapping[str, str] | None = None,
) -> TrainConfig:
    """`config` under `overrides` (nested mappings or dotted keys), checked; an error names
    a key as `names` says the user wrote it (else `config key '...'`) and `source`."""
    names = names or {}
    try:
        return TrainConfig.model_validate(_merged(config.model_dump(), overrides))
    except ValidationError as exc:
        raise _error(exc.errors()[0], source, names) from None
    except Invalid as exc:
        name = names.get(exc.key) or f"config key {exc.key!r}"
        raise WmtpError(f"{name} {exc.problem}", path=source, hint=exc.hint) from None


def with_settings(config: TrainConfig, settings: Sequence[Setting]) -> TrainConfig:
    names = {s.key: s.given_as for s in settings if s.given_as}
    return with_overrides(config, {s.key: s.value for s in settings}, "options", names)


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


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise WmtpError(f"config is not valid YAML{where}", path=source) from None
    if not isinstance(data, dict | None):
        raise WmtpError("config must be a YAML mapping of keys to values", path=source)
    return data or {}


def overlay_file(experiment: str, small: bool) -> str:
    """The packaged file of an experiment at a size: `configs/<experiment>_<size>.yaml`."""
    return f"{experiment.replace('-', '_')}_{'micro' if small else '7b'}.yaml"


def with_packaged(config: TrainConfig, name: str) -> TrainConfig:
    """`config` under the keys of the packaged `configs/<name>`."""
    text = resources.files("weighted_mtp.train").joinpath("configs", name).read_text()
    return with_overrides(config, _read_yaml(text, name), name)


def load_config(path: Path | None, *, micro: bool) -> TrainConfig:
    """`path`'s config, or the packaged Baseline one (micro or 7B), over the defaults."""
    if path is None:
        return with_packaged(TrainConfig(), overlay_file("baseline", micro))
    return read_run_config(path, legacy=False)


def build_config(
    experiment: str,
    *,
    small: bool,
    settings: Sequence[Setting] = (),
    file: Path | None = None,
    suite: bool = False,
) -> TrainConfig:
    """A new run's config: the Baseline config of the size (or `file`), under the small
    suite's overlay (`suite`), the experiment's overlay, then `settings`."""
    if experiment not in TRAINING_RUNS:
        raise UsageError(
            f"unknown experiment {experiment!r}", hint=f"choose one of {', '.join(TRAINING_RUNS)}"
        )
    config = load_config(file, micro=small)
    if file is None and suite and small:
        config = with_packaged(config, SUITE_SMALL)
    if file is None and experiment != "baseline":
        config = with_packaged(config, overlay_file(experiment, small))
    return with_settings(config, [Setting("experiment", experiment), *settings])


def config_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def read_run_config(path: Path, *, legacy: bool = True) -> TrainConfig:
    """A run's saved config.yaml (for --resume and for reading a finished run); runs saved
    before `n_future`, `max_steps` and `eval_batches` could be unset wrote 0 for unset."""
    try:
        data = _read_yaml(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise WmtpError(f"cannot read config: {exc.strerror}", path=path) from None
    zeros = ("n_future", "max_steps", "eval_batches") if legacy else ()
    return with_overrides(
        TrainConfig(), data | {k: None for k in zeros if data.get(k) == 0}, str(path)
    )


def validate_for_world(config: TrainConfig, world: int) -> None:
    """The global batch splits evenly over `world` ranks of `micro_batch_size` sequences."""
    if config.batch_size % (config.micro_batch_size * world):
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
    if config.heads(heads) > heads:
        raise WmtpError(
            f"n_future {config.n_future} exceeds the model's {heads} heads",
            path=source,
            hint=f"use --n-future 1..{heads}",
        )
