"""A finished run's weights, `final/`, written atomically (rank 0, after a gather): built
under a temporary name inside the run folder and renamed (`storage.atomic.atomic_folder`),
one writer per kind of model a run trains.

- The MTP policy (`save_policy_final`, by `final_save`): `model` (full fine-tuning) and
  `merged` (LoRA merged into the base by peft) are a model folder like the source's
  (`safetensors/model.safetensors` + `SHA256SUMS`, `configs/`, `tokenizer/`), loadable with
  `load_mtp_model`, in the source's dtype; `adapter` is peft's `save_pretrained` layout
  (`adapter_model.safetensors`, `adapter_config.json`), the LoRA tensors alone;
  `models.lora_merge.load_lora_merged` puts them back on the run's base model.
- The value model (`save_critic_final`): `critic.safetensors` (every tensor, LoRA layers
  included, as `frozen.load_critic` rebuilds it), the tokenizer and `stage.json`.
- The tuned reference (`save_reference_final`): a model folder in the source's dtype (LoRA
  merged), so the copied `config.json` (`torch_dtype`) states the truth, and `stage.json`.

`stage.json` says what a stage-1 model is: its base model and the SHA-256 of its tokenizer,
which stage 2 checks against the policy's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

import torch

from weighted_mtp.assets import STAGE_RECORD
from weighted_mtp.storage.atomic import atomic_folder, read_json_or_none, write_json
from weighted_mtp.storage.finished_runs import ADAPTER_WEIGHTS
from weighted_mtp.storage.hashing import sha256_file

if TYPE_CHECKING:
    from weighted_mtp.storage.layout import ModelPaths
    from weighted_mtp.train.config import TrainConfig
    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.lora import TrainedModel

STAGE_FILE = PurePosixPath(STAGE_RECORD).name
CRITIC_WEIGHTS = "critic.safetensors"
FinalWriter = Callable[["Path", "TrainedModel", "ModelPaths", "TrainConfig", "Dist"], None]


def full_state(model: TrainedModel) -> dict[str, torch.Tensor]:
    """Every parameter, unsharded, on the CPU (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast("dict[str, torch.Tensor]", get_model_state_dict(model.core, options=options))


def source_dtype(source: ModelPaths, tensor: str = "norm.weight") -> torch.dtype:
    """The dtype the source model stores (read from one of its tensors, `tensor`)."""
    from safetensors import safe_open

    with safe_open(source.weights, framework="pt") as handle:
        dtype: torch.dtype = handle.get_tensor(tensor).dtype
    return dtype


def _write_final(out: Path, dist_info: Dist, write: Callable[[Path], None]) -> None:
    """`write` fills an empty temporary folder on rank 0, renamed to `out` when complete
    (`atomic_folder`: only a `final/` folder an earlier finish of this run wrote is
    replaced)."""
    if dist_info.is_main:
        with atomic_folder(out) as tmp:
            write(tmp)
    dist_info.barrier()


def _write_model_folder(out: Path, tensors: dict[str, torch.Tensor], source: ModelPaths) -> None:
    from safetensors.torch import save_file

    from weighted_mtp.storage.hashing import write_sha256sums

    weights = out / "safetensors" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    write_sha256sums(weights.parent / "SHA256SUMS", {weights.name: sha256_file(weights)})
    for sub in ("configs", "tokenizer"):
        if (source.root / sub).is_dir():
            shutil.copytree(source.root / sub, out / sub)


def _write_adapter(out: Path, model: TrainedModel, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from weighted_mtp.train.lora import adapter_state_dict

    assert model.peft is not None
    adapter = {k: v.contiguous() for k, v in adapter_state_dict(model, state).items()}
    save_file(adapter, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    model.peft.peft_config["default"].save_pretrained(str(out))


def _merged(copy: TrainedModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's merge of the trained adapters (in `state`) into `copy`, an unsharded CPU copy
    of the model with the same LoRA layers."""
    from weighted_mtp.train.lora import merged_state_dict

    copy.core.load_state_dict(state, strict=True)
    return merged_state_dict(copy)


def _reference_copy(source: ModelPaths, config: TrainConfig) -> TrainedModel:
    """The tuned reference's structure, unsharded on the CPU, its values to be loaded."""
    from weighted_mtp.models.architecture import HfLlamaConfig
    from weighted_mtp.train.builders import reference_structure

    with torch.device("meta"):
        copy = reference_structure(HfLlamaConfig.from_file(source.hf_config), config)
    copy.core.to_empty(device="cpu")
    return copy


def save_policy_final(
    out: Path, model: TrainedModel, source: ModelPaths, config: TrainConfig, dist_info: Dist
) -> None:
    """The MTP policy by `final_save`: full weights, merged LoRA, the adapter, or nothing."""
    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.train.lora import apply_lora

    if config.final_save == "none":
        return
    state = full_state(model)

    def write(tmp: Path) -> None:
        if config.final_save == "adapter":
            _write_adapter(tmp, model, state)
            return
        tensors = state
        if config.final_save == "merged":
            params = cast("MtpTransformer", model.core).params
            tensors = _merged(apply_lora(MtpTransformer(params), config.lora, config.seed), state)
        dtype = source_dtype(source)
        _write_model_folder(tmp, {k: v.to(dtype) for k, v in tensors.items()}, source)

    _write_final(out, dist_info, write)


def save_critic_final(
    out: Path, model: TrainedModel, source: ModelPaths, config: TrainConfig, dist_info: Dist
) -> None:
    """The value model: its tensors, the tokenizer and `stage.json`."""
    from safetensors.torch import save_file

    state = full_state(model)

    def write(tmp: Path) -> None:
        tensors = {k: v.contiguous() for k, v in state.items()}
        save_file(tensors, tmp / CRITIC_WEIGHTS, metadata={"format": "pt"})
        shutil.copytree(source.root / "tokenizer", tmp / "tokenizer")
        write_json(tmp / STAGE_FILE, stage_record("critic", source, config))

    _write_final(out, dist_info, write)


def save_reference_final(
    out: Path, model: TrainedModel, source: ModelPaths, config: TrainConfig, dist_info: Dist
) -> None:
    """The tuned reference as a model folder in its source's dtype (LoRA merged)."""
    state = full_state(model)

    def write(tmp: Path) -> None:
        tensors = _merged(_reference_copy(source, config), state) if model.peft else state
        dtype = source_dtype(source, "model.norm.weight")  # config.json's torch_dtype
        _write_model_folder(tmp, {k: v.to(dtype) for k, v in tensors.items()}, source)
        write_json(tmp / STAGE_FILE, stage_record("ref-tune", source, config))

    _write_final(out, dist_info, write)


def stage_record(kind: str, source: ModelPaths, config: TrainConfig) -> dict[str, Any]:
    """What stage 2 needs to rebuild and trust a stage-1 model."""
    metadata = read_json_or_none(source.metadata, "metadata.json") or {}
    return {
        "kind": kind,
        "base_model": str(source.root),
        "base_name": source.name,
        "tokenizer_sha256": sha256_file(source.tokenizer_model),
        "tokenizer_shared_with": metadata.get("tokenizer_shared_with"),
        "head_hidden": config.critic.head_hidden,
        "objective": config.critic.objective,
        "lora": config.to_dict()["lora"],
    }
