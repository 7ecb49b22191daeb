"""`wmtp train plan`: a run's peak device memory per rank, from a traced step, before the run.

Every experiment of the table (`experiments.EXPERIMENTS`) is planned: the stage-2 policy
runs (baseline, verifiable, rho1) and stage 1 (critic: a value model; ref-tune: the
reference LM). The run's trained model is its row's `ModelKind.structure`, built as the
builders build it (meta device, LoRA, activation
checkpointing, FSDP2 over a fake process group of `ranks` ranks,
`torch.testing._internal.distributed.fake_pg`, as torchtitan's memory estimator does), given
fake storage (`FakeTensorMode`: shapes and dtypes, no memory, no arithmetic), the
optimizer's state is made (a step on zero gradients), and one optimizer step is traced on
full-length micro-batches (`micro_batch_size` rows of `seq_len` tokens): a later step
holds exactly what the traced one holds, and the first step less (no state yet while it
runs forward and backward).
`TensorMemory` follows every tensor; the plan is rank 0's peak (its shards are the largest)
split by what is held. No weights are read: only the models' `params.json` /
`config.json`, or, for a base model not downloaded yet, its published architecture
(`assets.PUBLISHED_ARCHITECTURES`).

A step is traced with the trainer's own code (`trainer.accumulate_gradients`,
`clip_gradients`, the optimizer of `make_optimizer`) on the objective the experiment table
makes for the same config: for a policy run `experiments.weighted_mtp`, the weighting's
scoring of the step's micro-batches (the frozen critic's values, or Rho-1's two
cross-entropies), then each micro-batch's forward and backward (the sequential-head
backward); for stage 1 the row's `ValueObjective` (a pairwise critic's forward without
gradient of every micro-batch first) or `NextTokenObjective`. Gradients are synchronised on
the last micro-batch only, so FSDP2 holds unsharded gradients between; then clipping and
AdamW. Only what is computed from the data on small `[batch, seq]` tensors is set to ones
(`ScoresOnly`, `CountsOnly`): the weights computed from the scores (a top-k count, a
whitening), the counts a stage-1 loss is divided by, a pairwise critic's pair
coefficients; fake tensors hold no data. Of n accumulated micro-batches the first two are
traced: the third and later ones repeat the second's memory exactly.

`device` is what the run will train on: `cuda` (bf16 autocast and bf16 FSDP2 parameters
when precision is auto or bf16, as on A100/H100) or `cpu` (float32). A run fits when its
peak is at most `HEADROOM` of the device memory; the rest is for what is not a tensor: the
CUDA context, the caching allocator's rounding and fragmentation, NCCL's buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from weighted_mtp import assets
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams
from weighted_mtp.storage.finished_runs import model_folder
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths
from weighted_mtp.train.batches import Batch, Sharding
from weighted_mtp.train.builders import trained_structure, value_structure
from weighted_mtp.train.config import TrainConfig, validate_for_world, with_overrides
from weighted_mtp.train.critic import ValueModel
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.experiments import (
    EXPERIMENTS,
    POLICY,
    VALUE_MODEL,
    ModelKind,
    Setup,
    uniform,
    weighted_mtp,
)
from weighted_mtp.train.final import STAGE_FILE
from weighted_mtp.train.frozen import Placement, frozen_structure
from weighted_mtp.train.objectives import (
    NextTokenObjective,
    StepContext,
    TrainingObjective,
    ValueObjective,
    ValueStep,
)
from weighted_mtp.train.tensor_memory import (
    ACTIVATIONS,
    FROZEN,
    GRADIENTS,
    LOGITS,
    OPTIMIZER,
    PARAMETERS,
    VALUE_HEAD,
    TensorMemory,
    watch_frozen,
    watch_model,
    watch_optimizer,
)
from weighted_mtp.train.trainer import accumulate_gradients, clip_gradients, make_optimizer
from weighted_mtp.train.weightings import Rho1, VerifiableCritic, WeighContext, Weighting, Weights

if TYPE_CHECKING:
    from weighted_mtp.train.lora import TrainedModel

Device = Literal["cuda", "cpu"]
DEVICES: tuple[Device, ...] = ("cuda", "cpu")
# The trace shards every parameter over each rank of the fake group, so its time grows with
# the ranks (measured for the 7B policy: +16 s at 1024 ranks, +60 s at 4096, on a loaded
# 2-core machine); 1024 ranks keeps any plan within seconds of a one-rank plan.
MAX_RANKS = 1024
# One device's memory in GiB: above 0, and at most 16 TiB (more than any accelerator or
# host a run trains on), so the budget stays a finite number of bytes.
MAX_DEVICE_GIB = 16384
HEADROOM = 0.9  # of the device memory, for tensors; the rest is not tensors (see above)
GIB = 2**30
TRACED_MICRO_BATCHES = 2


@dataclass(frozen=True)
class Helper:
    """The frozen model a weighted experiment scores with, as its architecture (a critic's
    LoRA and head in `trained_with`, the config its run trained with)."""

    kind: Literal["critic", "reference"]
    name: str
    config: HfLlamaConfig
    trained_with: TrainConfig | None = None


@dataclass(frozen=True)
class Models:
    """What a run trains (its kind, name and architecture) and scores with, without
    weights."""

    kind: ModelKind
    name: str
    architecture: MetaParams | HfLlamaConfig
    helper: Helper | None

    @property
    def categories(self) -> tuple[str, ...]:
        """The plan's split: a value model's outputs are its value head's, an LM's its
        vocabulary logits; only a policy run scores with a frozen helper."""
        output = VALUE_HEAD if self.kind is VALUE_MODEL else LOGITS
        helper = (FROZEN,) if self.kind is POLICY else ()
        return (PARAMETERS, GRADIENTS, OPTIMIZER, ACTIVATIONS, output, *helper)


@dataclass(frozen=True)
class Suggestion:
    """One setting changed, and the peak the plan traced with it."""

    change: str
    peak: int
    fits: bool


@dataclass(frozen=True)
class MemoryPlan:
    """Rank 0's peak tensor memory during a training step, by what it holds."""

    experiment: str
    models: Models
    ranks: int
    device: Device
    device_gib: float | None
    rows: int
    seq_len: int
    accumulation: int
    settings: dict[str, Any]
    split: dict[str, int]
    peak: int
    placement: Placement | None
    suggestions: tuple[Suggestion, ...] = ()

    @property
    def budget(self) -> int | None:
        """Bytes of the device memory tensors may take (`HEADROOM` of it)."""
        return None if self.device_gib is None else int(self.device_gib * GIB * HEADROOM)

    @property
    def fits(self) -> bool | None:
        budget = self.budget
        return None if budget is None else self.peak <= budget

    def as_record(self) -> dict[str, Any]:
        """The plan as JSON: bytes, and GiB rounded to 0.01, per rank."""
        helper = self.models.helper
        return {
            "experiment": self.experiment,
            "model": self.models.name,
            "helper": None if helper is None else {"kind": helper.kind, "model": helper.name},
            "ranks": self.ranks,
            "device": self.device,
            "device_memory_gib": self.device_gib,
            "headroom": HEADROOM,
            "micro_batch": {"rows": self.rows, "tokens": self.seq_len},
            "accumulation": self.accumulation,
            "settings": self.settings,
            "frozen": None if self.placement is None else self.placement.as_record(),
            "per_rank_bytes": {**self.split, "total": self.peak},
            "per_rank_gib": {k: gib(v) for k, v in {**self.split, "total": self.peak}.items()},
            "budget_gib": None if self.budget is None else gib(self.budget),
            "fits": self.fits,
            "suggestions": [
                {"change": s.change, "total_gib": gib(s.peak), "fits": s.fits}
                for s in self.suggestions
            ],
        }


def gib(n: int) -> float:
    return round(n / GIB, 2)


# The models' architectures -----------------------------------------------------------------


def _published(name: str, kind: str, path: Any) -> dict[str, object]:
    published = assets.PUBLISHED_ARCHITECTURES.get(name)
    if published is None:
        raise WmtpError(
            f"model {name} has no {kind}",
            path=path,
            hint=f"build the model first (wmtp models convert/micro {name})",
        )
    return published


def policy_params(layout: Layout, model: str) -> tuple[str, MetaParams]:
    """The policy's params.json (its folder's, else the published one of a base model)."""
    from weighted_mtp.models.adapter import read_mtp_params

    paths, _ = model_folder(layout, model)
    if paths.params.is_file():
        if paths.weights.is_file():
            return paths.name, read_mtp_params(paths)  # resolves vocab_size -1
        params = MetaParams.from_file(paths.params)
        if params.vocab_size > 0:
            return paths.name, params
    return paths.name, MetaParams.from_dict(_published(paths.name, "params.json", paths.params))


def llama_config(paths: ModelPaths) -> HfLlamaConfig:
    """A Hugging Face model's config.json (its folder's, else the published one)."""
    if paths.hf_config.is_file():
        return HfLlamaConfig.from_file(paths.hf_config)
    return HfLlamaConfig.from_dict(_published(paths.name, "config.json", paths.hf_config))


def _reference_of(layout: Layout, config: TrainConfig, policy: str) -> ModelPaths:
    """The reference a weighted run scores with: `rho1.reference` (a ref-tune run, a model),
    or the policy's registered reference model."""
    from weighted_mtp.train.helper_models import reference_helper

    if config.experiment == "rho1" and config.rho1.reference:
        if config.rho1.reference in MODELS:
            return layout.model(config.rho1.reference)
        folder = reference_helper(layout, config.rho1.reference).folder
        return ModelPaths(folder.name, folder)
    reference = assets.model(policy).reference if policy in MODELS else None
    if reference is None:
        raise WmtpError(
            f"the policy {policy} has no registered reference model",
            hint="name the reference: --set rho1.reference=MODEL|RUN (or critic.run=RUN)",
        )
    return layout.model(reference)


def helper_model(layout: Layout, config: TrainConfig, policy: str) -> Helper | None:
    """The frozen critic (from `critic.run`'s record, else as stage 1 would train it with
    this config) or reference of a weighted experiment; None for the Baseline."""
    from weighted_mtp.train.helper_models import stage_one_run

    if config.experiment == "baseline":
        return None
    if config.experiment == "verifiable":
        if config.critic.run:
            record = stage_one_run(config.critic.run, "critic").record
            root = Path(record["base_model"])
            overrides = {"critic.head_hidden": record["head_hidden"]}
            overrides |= {f"lora.{k}": v for k, v in (record.get("lora") or {}).items()}
            trained = with_overrides(config, overrides, STAGE_FILE)
            return Helper("critic", root.name, llama_config(ModelPaths(root.name, root)), trained)
        paths = _reference_of(layout, config, policy)
        return Helper("critic", paths.name, llama_config(paths), config)
    paths = _reference_of(layout, config, policy)
    return Helper("reference", paths.name, llama_config(paths))


def run_models(layout: Layout, config: TrainConfig) -> Models:
    kind = EXPERIMENTS[config.experiment].model
    if kind is POLICY:
        name, params = policy_params(layout, config.model)
        return Models(kind, name, params, helper_model(layout, config, name))
    paths, _ = model_folder(layout, config.model)
    return Models(kind, paths.name, llama_config(paths), None)


# The traced step ---------------------------------------------------------------------------


def planned_dtype(config: TrainConfig, device: Device) -> torch.dtype | None:
    """The autocast dtype the run will have on `device` (the trainer's `autocast_dtype`,
    taking a CUDA device to support bf16)."""
    if config.precision == "fp32":
        return None
    if device == "cuda":
        return torch.bfloat16
    if config.precision == "bf16":
        raise WmtpError("precision bf16 is not supported on cpu", hint="use --set precision=auto")
    return None


@contextmanager
def fake_process_group(ranks: int) -> Iterator[None]:
    """A process group of `ranks` ranks whose collectives do nothing (this process is
    rank 0); none for one rank."""
    import torch.distributed as dist

    if ranks == 1:
        yield
        return
    if dist.is_initialized():
        raise WmtpError("wmtp train plan runs in one process", hint="run it without torchrun")
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=ranks, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _helper_structure(helper: Helper) -> nn.Module:
    if helper.trained_with is not None:
        return value_structure(helper.config, helper.trained_with)
    from weighted_mtp.models.sharded_load import meta_llama

    return meta_llama(helper.config)


def full_batch(rows: int, seq_len: int, vocab: int, device: torch.device) -> Batch:
    """`rows` sequences of `seq_len` tokens, every token but the first a target."""
    tokens = torch.randint(0, vocab, (rows, seq_len), device=device)
    loss_mask = torch.ones(rows, seq_len, dtype=torch.bool, device=device)
    loss_mask[:, 0] = False
    lengths = torch.full((rows,), seq_len, device=device)
    is_correct = torch.ones(rows, dtype=torch.bool, device=device)
    ids = tuple(str(i) for i in range(rows))
    return Batch(tokens, loss_mask, lengths, is_correct, ids, ids)


@dataclass
class ScoresOnly:
    """A weighting as the plan traces it: the real weighting's scoring forwards (the frozen
    helper's, and the policy's for Rho-1), then weight 1 on every position."""

    scored: VerifiableCritic | Rho1
    name: str
    normalize: Any

    def weigh_step(self, batches: list[Batch], ctx: WeighContext) -> list[Weights]:
        return [Weights(torch.ones_like(s)) for s in self.scored.scores(batches, ctx)]

    def weigh(self, batch: Batch, ctx: WeighContext) -> Weights:
        return self.weigh_step([batch], ctx)[0]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: a plan runs one step."""


@dataclass
class CountsOnly:
    """A stage-1 objective as the plan traces it: its own forwards and backward (a pairwise
    critic's forward without gradient of every micro-batch included); only what `prepare`
    computes from the data is 1: the count the loss is divided by and each record's pair
    coefficient."""

    objective: ValueObjective | NextTokenObjective

    def __getattr__(self, name: str) -> Any:
        """Everything but the step's arithmetic is the objective's own (its name, ...)."""
        if name == "objective":  # not set yet (a copy): no recursion
            raise AttributeError(name)
        return getattr(self.objective, name)

    def prepare(self, model: TrainedModel, batches: list[Batch], ctx: StepContext) -> Any:
        if isinstance(self.objective, NextTokenObjective):
            return 1.0
        if self.objective.objective == "mc":
            return ValueStep(1.0)
        states, means = self.objective.forward_without_gradient(model, batches, ctx.dist.device)
        return ValueStep(1.0, 0.0, tuple(torch.ones_like(m) for m in means), states)

    def backward(
        self, model: TrainedModel, batch: Batch, index: int, prepared: Any, ctx: StepContext
    ) -> torch.Tensor:
        return self.objective.backward(model, batch, index, prepared, ctx)


def planned_objective(
    config: TrainConfig, helper: nn.Module | None, placement: Placement | None
) -> Callable[[Setup], TrainingObjective]:
    """The experiment's objective as the plan traces it: the table's, its data-dependent
    arithmetic replaced (`ScoresOnly`, `CountsOnly`)."""
    if EXPERIMENTS[config.experiment].model is POLICY:
        return weighted_mtp(planned_weighting(config, helper, placement))
    made = EXPERIMENTS[config.experiment].objective

    def objective(setup: Setup) -> TrainingObjective:
        return CountsOnly(cast("ValueObjective | NextTokenObjective", made(setup)))

    return objective


def step_memory(core: nn.Module, vocab_size: int, helper: nn.Module | None) -> TensorMemory:
    """A `TensorMemory` for a training step of the trained `core` (and its frozen `helper`),
    its tensors counted: a value model's outputs are what its value head allocates, an
    LM's those whose last dimension is its `vocab_size`. The plan and its test use it."""
    if isinstance(core, ValueModel):
        memory = TensorMemory()
        memory.tag_forward(core.head, VALUE_HEAD)
    else:
        memory = TensorMemory(vocab_size=vocab_size)
    watch_model(memory, core, PARAMETERS)
    if helper is not None:
        watch_frozen(memory, helper)
    return memory


def planned_weighting(
    config: TrainConfig, helper: nn.Module | None, placement: Placement | None
) -> Callable[[Setup], Weighting]:
    """The experiment's weighting on the (fake) `helper`, already placed."""

    def weighting(setup: Setup) -> Weighting:
        scored: VerifiableCritic | Rho1
        if helper is None:
            return uniform(setup)
        if config.experiment == "verifiable":
            scored = VerifiableCritic(helper, config.normalize, config.critic, frozen=config.frozen)
        else:
            scored = Rho1(helper, config.normalize, config.rho1, frozen=config.frozen)
        scored.placement = placement
        return ScoresOnly(scored, scored.name, scored.normalize)

    return weighting


def make_state(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's state, as after a first step: a step on zero gradients."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def traced_step(
    objective: TrainingObjective,
    model: TrainedModel,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    config: TrainConfig,
    ctx: StepContext,
) -> None:
    """One optimizer step as `Trainer.train_step` takes it (no metrics: fake numbers)."""
    accumulate_gradients(objective, model, batches, ctx)
    clip_gradients(model, config)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trace(
    layout: Layout, config: TrainConfig, models: Models, ranks: int, device: Device
) -> tuple[TensorMemory, Placement | None, int]:
    """Rank 0's tensor memory over a step, the helper's placement, and the number of
    micro-batches a step accumulates."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    accumulation = Sharding(config.batch_size, config.micro_batch_size, ranks).accumulation
    compute = planned_dtype(config, device)
    # FSDP2's default mesh is on the GPU when there is one; the trace follows it
    traced = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with fake_process_group(ranks):
        dist_info = Dist(0, ranks, traced)
        placement = None
        helper = None
        vocab = models.architecture.vocab_size
        with torch.device("meta"):
            model = models.kind.structure(models.architecture, config)
            trained_structure(model.core, config, dist_info, compute is not None)
            if models.helper is not None:
                helper = _helper_structure(models.helper)
                placement = frozen_structure(helper, config.frozen, ranks, compute)
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.core.to_empty(device=traced)
            model.core.train()
            if helper is not None:
                helper.to_empty(device=traced)
                helper.requires_grad_(False)
            memory = step_memory(model.core, vocab, helper)
            optimizer = make_optimizer(model, config)
            make_state(optimizer)
            watch_optimizer(memory, optimizer)
            setup = Setup(layout, config, model, dist_info)
            objective = planned_objective(config, helper, placement)(setup)
            with memory:
                batches = [
                    full_batch(config.micro_batch_size, config.seq_len, vocab, traced)
                    for _ in range(min(accumulation, TRACED_MICRO_BATCHES))
                ]
                ctx = StepContext(0, dist_info, compute)
                traced_step(objective, model, optimizer, batches, config, ctx)
    return memory, placement, accumulation


# The plan ----------------------------------------------------------------------------------


def check_request(config: TrainConfig, ranks: int, device: str, device_gib: float | None) -> Device:
    """The plan's own options, checked before anything is read or traced: one error each.
    Returns the device."""
    if device not in DEVICES:
        raise WmtpError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if not 1 <= ranks <= MAX_RANKS:
        raise WmtpError(
            f"--ranks must be between 1 and {MAX_RANKS}, not {ranks}",
            hint=f"plan at most {MAX_RANKS} ranks (the trace shards every parameter over each)",
        )
    if device_gib is not None and not (math.isfinite(device_gib) and device_gib > 0):
        raise WmtpError(
            f"--device-memory must be a positive number of GiB, not {device_gib}",
            hint="give one device's memory, e.g. --device-memory 80",
        )
    if device_gib is not None and device_gib > MAX_DEVICE_GIB:
        raise WmtpError(
            f"--device-memory {device_gib:g} GiB is more than any device ({MAX_DEVICE_GIB} GiB)",
            hint="give one device's memory in GiB, e.g. --device-memory 80",
        )
    validate_for_world(config, ranks)
    return device


def _check(config: TrainConfig, models: Models, ranks: int) -> None:
    context = getattr(models.architecture, "max_seq_len", None)  # an MTP policy's
    if context is not None and config.seq_len > context:
        raise WmtpError(
            f"seq_len {config.seq_len} is longer than the model's context {context}",
            hint=f"use --set seq_len={context} or less",
        )


def _settings(config: TrainConfig, models: Models) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "micro_batch_size": config.micro_batch_size,
        "batch_size": config.batch_size,
        "activation_checkpointing": config.activation_checkpointing,
        "lora": config.lora.enabled,
        "precision": config.precision,
    }
    if models.kind is POLICY:
        settings |= {"n_future": config.n_future, "frozen.shard": config.frozen.shard}
    if models.kind is VALUE_MODEL:
        settings |= {"critic.objective": config.critic.objective}
    return settings


def measure(
    layout: Layout,
    config: TrainConfig,
    models: Models,
    ranks: int,
    device: Device,
    device_gib: float | None,
) -> MemoryPlan:
    """The plan of one configuration (no suggestions)."""
    _check(config, models, ranks)
    memory, placement, accumulation = trace(layout, config, models, ranks, device)
    return MemoryPlan(
        config.experiment,
        models,
        ranks,
        device,
        device_gib,
        config.micro_batch_size,
        config.seq_len,
        accumulation,
        _settings(config, models),
        {category: memory.at_peak[category] for category in models.categories},
        memory.peak,
        placement,
    )


def alternatives(
    config: TrainConfig, ranks: int, helper: bool
) -> list[tuple[str, TrainConfig, int]]:
    """Single changes that lower the peak, each a valid run: (as typed, config, ranks)."""
    changes: dict[str, Any] = {}
    if config.activation_checkpointing == "none":
        changes["activation_checkpointing"] = "blocks"
    half = config.micro_batch_size // 2
    if half >= 1 and config.batch_size % (half * ranks) == 0:
        changes["micro_batch_size"] = half
    if not config.lora.enabled:
        changes["lora.enabled"] = True
    if helper and config.frozen.shard != "always" and ranks > 1:
        changes["frozen.shard"] = "always"
    options: list[tuple[str, TrainConfig, int]] = []
    for key, value in changes.items():
        typed = f"--set {key}={'true' if value is True else value}"
        options.append((typed, with_overrides(config, {key: value}, typed), ranks))
    if ranks * 2 <= MAX_RANKS and config.batch_size % (config.micro_batch_size * ranks * 2) == 0:
        options.append((f"--ranks {ranks * 2}", config, ranks * 2))
    return options


def plan_memory(
    layout: Layout,
    config: TrainConfig,
    *,
    ranks: int = 1,
    device: str = "cuda",
    device_gib: float | None = None,
) -> MemoryPlan:
    """The plan of `config` on `ranks` ranks on `device` (cuda or cpu); when it does not
    fit, each single change that lowers the peak, planned too (those that fit first)."""
    checked = check_request(config, ranks, device, device_gib)
    models = run_models(layout, config)
    plan = measure(layout, config, models, ranks, checked, device_gib)
    if plan.fits is not False:
        return plan
    found = []
    for change, changed, changed_ranks in alternatives(config, ranks, models.helper is not None):
        tried = measure(layout, changed, models, changed_ranks, plan.device, device_gib)
        found.append(Suggestion(change, tried.peak, bool(tried.fits)))
    ranked = sorted(found, key=lambda s: (not s.fits, s.peak))
    return replace(plan, suggestions=tuple(ranked))
