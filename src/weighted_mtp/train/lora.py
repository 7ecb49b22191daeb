"""LoRA through peft, and the model a run trains.

`apply_lora` injects peft's LoRA layers into the named linears of every block (`wq, wk, wv,
wo, w1, w2, w3` by default) and freezes everything else (embeddings, norms, output). The
trainer keeps calling the same module (`TrainedModel.core`), whose linears now carry the
adapters, so the sequential-head backward and sharding work unchanged. A Llama reference or
critic takes the same LoRA config, Meta's linear names mapped to transformers' (`hf_targets`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from weighted_mtp.train.config import LoraConfig

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from torch import nn

ADAPTER = "default"  # peft's name for the one adapter a model gets
T = TypeVar("T")
META_TO_HF = {
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
}


@dataclass
class TrainedModel:
    """The model a run trains: `core` is what its forward calls (the MTP transformer, the
    value model or the reference LM, sharded under torchrun). With LoRA (`frozen_base`) only
    the adapters (and a critic's value head) train, and checkpoints save those tensors
    alone, the base being the model asset; `peft` is peft's wrapper where saving the adapter
    or merging it needs it; `heads` is the prediction heads a policy trains."""

    core: torch.nn.Module
    frozen_base: bool = False
    peft: PeftModel | None = None
    heads: int = 1

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.core.parameters() if p.requires_grad]


def peft_config(lora: LoraConfig, targets: tuple[str, ...]) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        bias="none",
    )


def hf_targets(lora: LoraConfig) -> tuple[str, ...]:
    """The targets under transformers' Llama names (`wq` -> `q_proj`, ...)."""
    return tuple(META_TO_HF.get(t, t) for t in lora.targets)


def apply_lora(
    model: torch.nn.Module, lora: LoraConfig, seed: int, targets: tuple[str, ...] = ()
) -> TrainedModel:
    """Full fine-tuning (`lora.enabled` False) or LoRA adapters initialised from `seed`
    on `targets` (default: `lora.targets`, Meta's names of the MTP transformer)."""
    if not lora.enabled:
        return TrainedModel(model)
    import torch
    from peft import get_peft_model

    targets = targets or lora.targets
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = peft_config(lora, targets)
        wrapped = with_adapter_values(model, lambda: get_peft_model(model, config))
    return TrainedModel(wrapped.base_model.model, True, wrapped)  # `model`, wrapped


def inject_lora(module: torch.nn.Module, lora: LoraConfig, seed: int) -> torch.nn.Module:
    """peft's LoRA layers in a transformers backbone (a critic's), with no peft wrapper:
    only the adapters stay trainable among the backbone's parameters."""
    import torch
    from peft import inject_adapter_in_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = peft_config(lora, hf_targets(lora))
        module = with_adapter_values(module, lambda: inject_adapter_in_model(config, module))
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)
    return module


def with_adapter_values(model: nn.Module, inject: Callable[[], T]) -> T:
    """`inject()` LoRA adapters into `model`; on a meta-built model, give them values too.

    peft initialises a new adapter on the CPU and then moves it to its base layer's device,
    the meta device for a model built there, which drops the values. They are replayed
    from the RNG state the injection started from, with peft's own initialisers, in the
    order peft draws them (per layer, in module order: the `nn.Linear` constructions of A
    and B, then `reset_lora_parameters`), so a meta-built model gets exactly the adapters
    an eagerly built one does, whole, on the CPU, before it is sharded. Under
    `torch.device("meta")` (a memory plan) they stay on the meta device."""
    import torch
    from peft.tuners.lora import LoraLayer

    rng = torch.random.get_rng_state()
    injected = inject()
    if torch.get_default_device().type == "meta":
        return injected  # built wholly on the meta device: shapes wanted, not values
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not any(p.is_meta for layer in layers for p in layer.lora_A.parameters()):
        return injected
    after = torch.random.get_rng_state()
    torch.random.set_rng_state(rng)
    for layer in layers:
        pair = (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER])
        for linear in cast("tuple[nn.Linear, nn.Linear]", pair):
            linear.to_empty(device="cpu")
            linear.reset_parameters()
        cast("Any", layer).reset_lora_parameters(ADAPTER, init_lora_weights=True)
    if not torch.equal(torch.random.get_rng_state(), after):
        raise RuntimeError("peft's adapter initialisation drew other random numbers than replayed")
    return injected


def adapter_state_dict(model: TrainedModel, full_state: dict[str, Any]) -> dict[str, Any]:
    """The LoRA tensors alone, named as peft saves them (`save_pretrained` layout)."""
    from peft import get_peft_model_state_dict

    assert model.peft is not None
    adapter: dict[str, Any] = get_peft_model_state_dict(
        model.peft, state_dict=_peft_names(full_state)
    )
    return adapter


def merged_state_dict(model: TrainedModel) -> dict[str, Any]:
    """Base weights with the adapters merged in by peft, under the base's tensor names."""
    assert model.peft is not None
    merged: Any = model.peft.merge_and_unload()
    state: dict[str, Any] = merged.state_dict()
    return state


def _peft_names(core_state: dict[str, Any]) -> dict[str, Any]:
    """`core` state dict keys as the PeftModel names them."""
    return {f"base_model.model.{name}": tensor for name, tensor in core_state.items()}
