"""Models built on the meta device and filled in place, each rank reading only its part.

The recipe torchtitan and torchtune use: build the module on the meta device (no memory),
change its structure (LoRA adapters, activation-checkpoint wrappers, FSDP2 sharding), and
only then give it storage on the target device and fill it:

- tensors the weights file holds are read by DCP's safetensors reader
  (`HuggingFaceStorageReader`, mapping the file for one tensor at a time), which asks
  safetensors for exactly the rows each rank's shard covers (`safe_open(...).get_slice`):
  a rank's host memory is its shard plus one slice in flight, and no device ever holds
  more than its shard. Every rank reads its own
  rows from the shared file, so nothing is scattered and no rank holds a whole tensor; the
  price is N readers of one file, which a page cache or a parallel filesystem serves well.
- tensors the file does not hold (fresh LoRA adapters, a new value head) were initialised
  for real on the CPU before sharding (`fresh_tensors`), where their values cannot depend
  on the number of ranks; each rank copies its part of them.
- non-persistent buffers (transformers' rotary `inv_freq`) are recomputed, since they are
  in no file.

One process takes the same path without a process group: the whole model, one tensor at a
time, so its peak is the model in its dtype plus one tensor in the file's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.adapter import MtpTransformer, llama_config, safetensors_shapes
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

# Module names that wrap another without adding a level to the stored names: peft's LoRA
# layer keeps the original linear as `base_layer`, torch's activation checkpointing wraps a
# block as `_checkpoint_wrapped_module`.
WRAPPER_SEGMENTS = frozenset({"base_layer", "_checkpoint_wrapped_module"})
CHECKPOINT_WRAPPER = "_checkpoint_wrapped_module"


def unwrapped_name(name: str) -> str:
    """A tensor's name in a model folder: the wrappers' segments dropped
    (`layers.0._checkpoint_wrapped_module.attention.wq.base_layer.weight` ->
    `layers.0.attention.wq.weight`)."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def state_name(name: str) -> str:
    """A tensor's name in the module's `state_dict()` (which hides activation checkpointing,
    not LoRA): how a saved module (a critic's `critic.safetensors`) names it."""
    return ".".join(part for part in name.split(".") if part != CHECKPOINT_WRAPPER)


@dataclass(frozen=True)
class Weights:
    """Where a module's tensors are read from: a safetensors file, and the name in it of
    each of the module's tensors (None: not in the file, initialised before sharding)."""

    file: Path
    name_in_file: Callable[[str], str | None] = unwrapped_name


def module_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and persistent buffers by their full module names (wrappers included)."""
    persistent = set(module.state_dict(keep_vars=True))
    tensors: dict[str, Tensor] = dict(module.named_parameters())
    for name, buffer in module.named_buffers():
        if state_name(name) in persistent:
            tensors[name] = buffer
    return tensors


def fresh_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The tensors already initialised for real (not on the meta device), whole, by their
    `state_name`: taken before wrapping and sharding; each rank later keeps its part
    (`materialize`)."""
    return {
        state_name(name): t.detach() for name, t in module_tensors(module).items() if not t.is_meta
    }


@contextmanager
def single_process_intended() -> Iterator[None]:
    """DCP warns whenever it loads without a process group, although `no_dist` is passed on
    purpose (one process): silence only that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def _copy_part(target: Tensor, whole: Tensor) -> None:
    """Copy this rank's part of `whole` into `target` (a DTensor shard, or a plain tensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(target, DTensor):
            # src_data_rank=None: every rank cuts its own part from its own copy, no scatter
            part = distribute_tensor(
                whole.to(target.dtype), target.device_mesh, target.placements, src_data_rank=None
            )
            target.to_local().copy_(part.to_local())
        else:
            target.copy_(whole)


def _tensor_at_a_time_reader(folder: Path) -> Any:
    """DCP's safetensors reader, mapping the file for one tensor at a time: its own keeps
    the file mapped for the whole load, and every page read stays resident in the process
    until the end (the weights' size in RSS on top of the model's)."""
    from safetensors import safe_open
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    class TensorAtATime(HuggingFaceStorageReader):
        def read_data(self, plan: Any, planner: Any) -> torch.futures.Future[None]:
            for item in plan.items:
                path = self.storage_data[item.storage_index].relative_path
                with safe_open(path, framework="pt") as handle:
                    self._process_read_request(handle, item, planner)
            done: torch.futures.Future[None] = torch.futures.Future()
            done.set_result(None)
            return done

    return TensorAtATime(str(folder))


def read_from_file(targets: dict[str, Tensor], folder: Path) -> None:
    """Fill `targets` (file name -> tensor, sharded or whole) from the safetensors files of
    `folder`; each rank reads the rows of its shards only. A collective under torchrun."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict_loader import load

    with single_process_intended():
        load(
            targets,
            storage_reader=_tensor_at_a_time_reader(folder),
            no_dist=not dist.is_initialized(),
        )


def reset_non_persistent_buffers(module: nn.Module) -> None:
    """Recompute the buffers no file holds. transformers' Llama rotary tables are the only
    kind the models here have; any other is refused rather than left uninitialised."""
    persistent = set(module.state_dict(keep_vars=True))
    owners = {
        name.rpartition(".")[0]
        for name, _ in module.named_buffers()
        if state_name(name) not in persistent
    }
    if not owners:
        return
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    for owner_name in sorted(owners):
        owner = module.get_submodule(owner_name)
        if not isinstance(owner, LlamaRotaryEmbedding):
            raise TypeError(f"{owner_name} has non-persistent buffers wmtp cannot recompute")
        rebuilt = LlamaRotaryEmbedding(owner.config)  # on the CPU: a few KiB
        with torch.no_grad():
            for name, buffer in rebuilt.named_buffers(recurse=False):
                getattr(owner, name).copy_(buffer)


def materialize(
    module: nn.Module, device: torch.device, weights: Weights, fresh: dict[str, Tensor]
) -> None:
    """Give the (meta-built, maybe sharded) `module` storage on `device` and fill it: tensors
    of `weights.file` read rank by rank, the `fresh` ones (whole, from before sharding)
    copied part by part, non-persistent buffers recomputed. A collective under torchrun."""
    module.to_empty(device=device)
    in_file = safetensors_shapes(weights.file)
    from_file: dict[str, Tensor] = {}
    for name, tensor in module_tensors(module).items():
        stored = weights.name_in_file(name)
        if stored is not None and stored in in_file:
            if tuple(in_file[stored]) != tuple(tensor.shape):
                raise WmtpError(
                    f"tensor {stored} has shape {list(in_file[stored])}, "
                    f"the model needs {list(tensor.shape)}",
                    path=weights.file,
                    hint="the weights come from another model; rebuild or retrain them",
                )
            from_file[stored] = tensor
        elif state_name(name) in fresh:
            _copy_part(tensor, fresh[state_name(name)])
        else:
            raise WmtpError(f"tensor {stored or name} is missing", path=weights.file)
    read_from_file(from_file, weights.file.parent)
    reset_non_persistent_buffers(module)


# Meta-built models -------------------------------------------------------------------------


def meta_mtp_model(params: MetaParams) -> MtpTransformer:
    """The MTP transformer of `params` on the meta device (no memory, no values)."""
    with torch.device("meta"):
        return MtpTransformer(params)


def meta_llama(config: HfLlamaConfig) -> LlamaForCausalLM:
    """transformers' LlamaForCausalLM of `config` on the meta device, in eval mode."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model: Any = LlamaForCausalLM(llama_config(config))
    return cast("LlamaForCausalLM", model.eval())


def parameter_count(module: nn.Module) -> int:
    """Elements of every parameter (works on the meta device and on shards' global shapes)."""
    return sum(p.numel() for p in module.parameters())
