"""The model builders: one function per kind of model a run trains, from its model folder,
the run's config and this rank's place (`Dist`) to the ready model, on its device and,
under torchrun, sharded with FSDP2 (`distributed.shard` for the MTP policy, `shard_blocks`
for the transformers models), so every stage trains data-parallel the same way.

- `build_policy`: the MTP transformer of a Meta-format model folder (baseline, verifiable,
  rho1), with LoRA when `lora.enabled`.
- `build_value_model`: a value model on a Llama reference's backbone (critic).
- `build_reference`: a Llama causal LM (ref-tune).

Every rank builds the same initial model: the loaded weights, and LoRA and a fresh value
head initialised from the run's seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from weighted_mtp.storage.layout import ModelPaths
from weighted_mtp.train.config import TrainConfig, validate_for_model
from weighted_mtp.train.critic import ValueModel
from weighted_mtp.train.distributed import Dist, autocast_dtype, shard, shard_blocks
from weighted_mtp.train.frozen import transformer_blocks
from weighted_mtp.train.lora import TrainedModel, apply_lora, hf_targets, inject_lora

if TYPE_CHECKING:
    from weighted_mtp.models.adapter import MtpTransformer


def build_policy(paths: ModelPaths, config: TrainConfig, dist_info: Dist) -> TrainedModel:
    """The MTP policy, checked against the config (context, heads), LoRA applied."""
    from weighted_mtp.models.adapter import load_mtp_model

    model = load_mtp_model(paths.root, dtype=torch.float32)
    params = model.params
    validate_for_model(config, params.max_seq_len, params.n_future_tokens, paths.params)
    trained = apply_lora(model, config.lora, config.seed)
    trained.core.to(dist_info.device)
    if dist_info.sharded:
        low_precision = autocast_dtype(config, dist_info.device) is not None
        shard(cast("MtpTransformer", trained.core), low_precision)
    return trained


def value_model(base: Path, config: TrainConfig) -> ValueModel:
    """A value model on the backbone of the Llama model in `base`, on the CPU: LoRA on the
    backbone when `lora.enabled`, a value head `critic.head_hidden` wide (from the seed)."""
    from weighted_mtp.models.adapter import load_reference_model

    backbone = load_reference_model(base).model  # LlamaModel, no LM head
    if config.lora.enabled:
        backbone = inject_lora(backbone, config.lora, config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ValueModel(backbone, config.critic.head_hidden)


def build_value_model(paths: ModelPaths, config: TrainConfig, dist_info: Dist) -> TrainedModel:
    """The critic being trained (only its adapters and value head with LoRA)."""
    return _placed(
        TrainedModel(value_model(paths.root, config), config.lora.enabled), config, dist_info
    )


def reference_lm(base: Path, config: TrainConfig) -> TrainedModel:
    """The Llama causal LM in `base` on the CPU, LoRA applied when `lora.enabled`."""
    from weighted_mtp.models.adapter import load_reference_model

    model = load_reference_model(base)
    return apply_lora(model, config.lora, config.seed, hf_targets(config.lora))


def build_reference(paths: ModelPaths, config: TrainConfig, dist_info: Dist) -> TrainedModel:
    """The reference being fine-tuned (ref-tune)."""
    return _placed(reference_lm(paths.root, config), config, dist_info)


def _placed(model: TrainedModel, config: TrainConfig, dist_info: Dist) -> TrainedModel:
    """A transformers model on this rank's device, sharded per decoder layer under torchrun."""
    model.core.to(dist_info.device)
    if dist_info.sharded:
        low_precision = autocast_dtype(config, dist_info.device) is not None
        shard_blocks(model.core, transformer_blocks(model.core), low_precision)
    return model
