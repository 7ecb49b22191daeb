"""A finished run's weights, `final/`, written atomically (rank 0, after a gather).

- `model` (full fine-tuning) and `merged` (LoRA merged into the base by peft): a model folder
  like the source's (`safetensors/model.safetensors` + `SHA256SUMS`, `configs/`,
  `tokenizer/`), loadable with `load_mtp_model`, in the source's dtype.
- `adapter`: peft's `save_pretrained` layout (`adapter_model.safetensors`,
  `adapter_config.json`), the LoRA tensors alone; `load_adapter_merged` puts them back on
  the run's base model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER

if TYPE_CHECKING:
    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.storage.layout import ModelPaths
    from weighted_mtp.train.config import TrainConfig
    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.lora import Policy
    from weighted_mtp.train.runs import FinishedRun


def full_state(policy: Policy) -> dict[str, torch.Tensor]:
    """Every parameter, unsharded, on the CPU (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast("dict[str, torch.Tensor]", get_model_state_dict(policy.core, options=options))


def source_dtype(source: ModelPaths, tensor: str = "norm.weight") -> torch.dtype:
    """The dtype the source model stores (read from one of its tensors, `tensor`)."""
    from safetensors import safe_open

    with safe_open(source.weights, framework="pt") as handle:
        return handle.get_tensor(tensor).dtype


def _merged(policy: Policy, state: dict[str, torch.Tensor], config: TrainConfig) -> dict:
    """peft's merge of the adapters into a CPU copy of the policy."""
    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.train.lora import apply_lora, merged_state_dict

    copy = apply_lora(MtpTransformer(policy.core.params), config.lora, config.seed)
    copy.core.load_state_dict(state, strict=True)
    return merged_state_dict(copy)


def _write_model_folder(out: Path, tensors: dict[str, torch.Tensor], source: ModelPaths) -> None:
    from safetensors.torch import save_file

    from weighted_mtp.storage.hashing import sha256_file, write_sha256sums

    weights = out / "safetensors" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    write_sha256sums(weights.parent / "SHA256SUMS", {weights.name: sha256_file(weights)})
    for sub in ("configs", "tokenizer"):
        if (source.root / sub).is_dir():
            shutil.copytree(source.root / sub, out / sub)


def _write_adapter(out: Path, policy: Policy, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from weighted_mtp.train.lora import adapter_state_dict

    assert policy.peft is not None
    out.mkdir(parents=True)
    adapter = {k: v.contiguous() for k, v in adapter_state_dict(policy, state).items()}
    save_file(adapter, out / "adapter_model.safetensors", metadata={"format": "pt"})
    policy.peft.peft_config["default"].save_pretrained(str(out))


def save_final(
    out: Path, policy: Policy, source: ModelPaths, config: TrainConfig, dist_info: Dist
) -> None:
    if config.final_save == "none":
        return
    state = full_state(policy)
    if dist_info.is_main:
        tmp = out.with_name(f".{out.name}{TEMP_MARKER}partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if config.final_save == "adapter":
                _write_adapter(tmp, policy, state)
            else:
                tensors = _merged(policy, state, config) if config.final_save == "merged" else state
                dtype = source_dtype(source)
                _write_model_folder(tmp, {k: v.to(dtype) for k, v in tensors.items()}, source)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    dist_info.barrier()


def load_adapter_merged(run: FinishedRun, device: str, dtype: torch.dtype) -> MtpTransformer:
    """A run's LoRA adapter (`final/`, as `_write_adapter` saved it) loaded by peft onto the
    base model the run trained from, and merged into it."""
    from peft import PeftModel

    from weighted_mtp.models.adapter import load_mtp_model

    base = load_mtp_model(run.base.root, device=device, dtype=dtype)
    try:
        wrapped = PeftModel.from_pretrained(base, str(run.paths.final), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise WmtpError(
            f"the LoRA adapter does not load onto {run.base.name}: {exc}".splitlines()[0],
            path=run.paths.final,
            hint="the run's base model changed since it trained; evaluate it on that base",
        ) from None
    return cast("MtpTransformer", wrapped.merge_and_unload()).eval()
