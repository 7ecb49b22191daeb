"""LoRA through peft on the block linears, and the two ways to save the result.

`apply_lora` injects peft's LoRA layers into the named linears of every block (`wq, wk, wv,
wo, w1, w2, w3` by default) and freezes everything else (embeddings, norms, output). The
trainer keeps calling the same `MtpTransformer` (`Policy.core`), whose linears now carry the
adapters, so the sequential-head backward and sharding work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from weighted_mtp.models.adapter import MtpTransformer

BLOCK_LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA as the 7B fine-tuning used it: r 64, alpha 128, dropout 0.05 on the block linears."""

    enabled: bool = False
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    targets: tuple[str, ...] = BLOCK_LINEARS


@dataclass
class Policy:
    """The model being trained: `core` has `trunk`/`head_logits`; `peft` wraps it for LoRA."""

    core: MtpTransformer
    peft: PeftModel | None = None

    @property
    def frozen_base(self) -> bool:
        return self.peft is not None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.core.parameters() if p.requires_grad]


def apply_lora(model: MtpTransformer, settings: LoraSettings, seed: int) -> Policy:
    """Full fine-tuning (`settings.enabled` False) or LoRA adapters initialised from `seed`."""
    if not settings.enabled:
        return Policy(model)
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, config)
    return Policy(cast("MtpTransformer", wrapped.base_model.model), wrapped)  # `model`, wrapped


def adapter_state_dict(policy: Policy, full_state: dict[str, Any]) -> dict[str, Any]:
    """The LoRA tensors alone, named as peft saves them (`save_pretrained` layout)."""
    from peft import get_peft_model_state_dict

    assert policy.peft is not None
    return get_peft_model_state_dict(policy.peft, state_dict=_peft_names(full_state))


def merged_state_dict(policy: Policy) -> dict[str, Any]:
    """Base weights with the adapters merged in by peft, under Meta's tensor names."""
    assert policy.peft is not None
    return policy.peft.merge_and_unload().state_dict()


def _peft_names(core_state: dict[str, Any]) -> dict[str, Any]:
    """`core` state dict keys as the PeftModel names them."""
    return {f"base_model.model.{name}": tensor for name, tensor in core_state.items()}
