"""The model builders: one function per kind of model a run trains or scores with, from its
model folder, the run's config and this rank's place (`Dist`) to the ready model.

Every builder follows one recipe (`models.sharded_load`), the same for every stage: build on
the meta device; add what the run trains (LoRA adapters, a value head; initialised on the
CPU, whole, with exactly the values an eagerly built model gets from the run's seed, so
every rank starts from the same model); wrap each transformer block for activation
checkpointing when `activation_checkpointing: blocks`; shard with FSDP2 under torchrun
(`distributed.shard`); only then load, each rank reading the slices of the weights file
its shards cover. One process takes the same path and holds the whole model.

Trained (`TrainedModel`, the experiment table's model kinds):
- `build_policy`: the MTP transformer of a Meta-format model folder (baseline, verifiable,
  rho1), with LoRA when `lora.enabled`.
- `build_value_model`: a value model on a Llama reference's backbone (critic).
- `build_reference`: a Llama causal LM (ref-tune).

Frozen (stage 2's helpers, in their scoring dtype, replicated or sharded by `FrozenConfig`,
`frozen.place_frozen`):
- `build_frozen_critic`: the value model a critic run saved.
- `build_frozen_reference`: Rho-1's reference.

The `*_structure` functions are the models without weights, for `final/`'s merge copy and
for the memory plan (`memory_plan`), which builds them under `torch.device("meta")`; each
trained kind's is its `experiments.ModelKind.structure`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from weighted_mtp.models.adapter import read_checked_llama_config, read_checked_mtp_params
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams
from weighted_mtp.models.sharded_load import (
    Weights,
    fresh_tensors,
    materialize,
    meta_llama,
    meta_mtp_model,
    state_name,
    unwrapped_name,
)
from weighted_mtp.train.config import TrainConfig, validate_for_model
from weighted_mtp.train.critic import ValueModel
from weighted_mtp.train.distributed import Dist, autocast_dtype, checkpoint_blocks, shard
from weighted_mtp.train.frozen import Placement, freeze, place_frozen
from weighted_mtp.train.lora import TrainedModel, apply_lora, hf_targets, inject_lora

if TYPE_CHECKING:
    from weighted_mtp.storage.layout import ModelPaths

BACKBONE = "backbone."  # a ValueModel's backbone, `model.` in a LlamaForCausalLM folder


def trained_structure(
    module: nn.Module, config: TrainConfig, dist: Dist, low_precision: bool
) -> dict[str, Tensor]:
    """Activation checkpointing and, under torchrun, FSDP2 on a meta-built `module`; its
    fresh tensors, taken whole before, are returned for `materialize`."""
    fresh = fresh_tensors(module)
    if config.activation_checkpointing == "blocks":
        checkpoint_blocks(module)
    if dist.sharded:
        shard(module, low_precision)
    return fresh


def _load_trained(model: TrainedModel, config: TrainConfig, dist: Dist, weights: Weights) -> None:
    low_precision = autocast_dtype(config, dist.device) is not None
    fresh = trained_structure(model.core, config, dist, low_precision)
    materialize(model.core, dist.device, weights, fresh)
    model.core.train()


def policy_structure(params: MetaParams, config: TrainConfig) -> TrainedModel:
    """The policy of `params` on the meta device with its LoRA adapters (their values on the
    CPU unless built under `torch.device("meta")`)."""
    policy = apply_lora(meta_mtp_model(params), config.lora, config.seed)
    policy.heads = config.heads(params.n_future_tokens)
    return policy


def build_policy(paths: ModelPaths, config: TrainConfig, dist: Dist) -> TrainedModel:
    """The MTP policy, checked against the config (context, heads), LoRA applied."""
    params = read_checked_mtp_params(paths)
    validate_for_model(config, params.max_seq_len, params.n_future_tokens, paths.params)
    policy = policy_structure(params, config)
    _load_trained(policy, config, dist, Weights(paths.weights))
    return policy


def _backbone_name(name: str) -> str | None:
    """A ValueModel tensor's name in the reference folder (None: the value head)."""
    if not name.startswith(BACKBONE):
        return None
    return "model." + unwrapped_name(name.removeprefix(BACKBONE))


def value_structure(typed: HfLlamaConfig, config: TrainConfig) -> ValueModel:
    """A value model on the backbone of the Llama `typed` on the meta device: LoRA on the
    backbone when `lora.enabled`, a value head `critic.head_hidden` wide, both drawn from
    `config.seed` (on the CPU, unless built under `torch.device("meta")`)."""
    backbone: Any = meta_llama(typed).model  # LlamaModel, no LM head
    if config.lora.enabled:
        backbone = inject_lora(backbone, config.lora, config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ValueModel(backbone, config.critic.head_hidden)


def value_model_structure(typed: HfLlamaConfig, config: TrainConfig) -> TrainedModel:
    """The critic a critic run trains (only its adapters and value head with LoRA), on the
    meta device (`value_structure`)."""
    return TrainedModel(value_structure(typed, config), config.lora.enabled)


def build_value_model(paths: ModelPaths, config: TrainConfig, dist: Dist) -> TrainedModel:
    """The critic being trained: the reference folder's backbone and a fresh value head."""
    trained = value_model_structure(read_checked_llama_config(paths), config)
    _load_trained(trained, config, dist, Weights(paths.weights, _backbone_name))
    return trained


def reference_structure(typed: HfLlamaConfig, config: TrainConfig) -> TrainedModel:
    """The Llama causal LM `typed` on the meta device, LoRA applied when `lora.enabled`
    (peft's wrapper in `peft`, the model itself in `core`)."""
    return apply_lora(meta_llama(typed), config.lora, config.seed, hf_targets(config.lora))


def build_reference(paths: ModelPaths, config: TrainConfig, dist: Dist) -> TrainedModel:
    """The reference being fine-tuned (ref-tune)."""
    reference = reference_structure(read_checked_llama_config(paths), config)
    _load_trained(reference, config, dist, Weights(paths.weights))
    return reference


def _frozen(
    module: nn.Module, config: TrainConfig, dist: Dist, weights: Weights
) -> tuple[nn.Module, Placement]:
    freeze(module)
    policy_dtype = autocast_dtype(config, dist.device)
    placement = place_frozen(module, config.frozen, dist.device, policy_dtype, weights)
    return module, placement


def build_frozen_reference(
    paths: ModelPaths, config: TrainConfig, dist: Dist
) -> tuple[nn.Module, Placement]:
    """Rho-1's frozen reference (a model folder, e.g. a ref-tune run's `final/`), placed."""
    reference = meta_llama(read_checked_llama_config(paths))
    return _frozen(reference, config, dist, Weights(paths.weights))


def build_frozen_critic(
    base_config: Path, weights: Path, trained_with: TrainConfig, dist: Dist
) -> tuple[nn.Module, Placement]:
    """The Verifiable Critic's frozen critic, placed: the structure its run trained (the
    base's `config.json`, the run's `lora` and `critic.head_hidden` in `trained_with`),
    every tensor read from its saved `weights` (the run's `critic.safetensors`), none from
    the base model."""
    typed = HfLlamaConfig.from_file(base_config)
    with torch.device("meta"):  # no fresh values: the run saved them all
        critic = value_structure(typed, trained_with)
    return _frozen(critic, trained_with, dist, Weights(weights, state_name))
