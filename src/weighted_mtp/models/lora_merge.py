"""A LoRA adapter saved by peft (`adapter_model.safetensors` + `adapter_config.json`) put
back on the Meta-format model it was trained on, and merged into its weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from weighted_mtp.errors import WmtpError

if TYPE_CHECKING:
    import torch

    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.storage.layout import ModelPaths


def load_lora_merged(
    adapter_dir: Path, base: ModelPaths, device: Any, dtype: torch.dtype
) -> MtpTransformer:
    """The base model with the adapter in `adapter_dir` loaded by peft and merged into it,
    in eval mode; an adapter that does not fit the base is one error."""
    from peft import PeftModel

    from weighted_mtp.models.adapter import load_mtp_model

    model = load_mtp_model(base.root, device=device, dtype=dtype)
    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise WmtpError(
            f"the LoRA adapter does not load onto {base.name}: {exc}".splitlines()[0],
            path=adapter_dir,
            hint="the run's base model changed since it trained; evaluate it on that base",
        ) from None
    return cast("MtpTransformer", wrapped.merge_and_unload()).eval()
