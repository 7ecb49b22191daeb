"""Worker for test_sharded_load: `python sharded_load_worker.py RANK WORLD RENDEZVOUS MTP REF OUT`.

One gloo rank builds, through the builders, the models a 2-rank run has: the policy (LoRA,
activation checkpointing, FSDP2), a critic to train and a frozen reference (sharded), each
loaded by reading only this rank's rows; and, without any process group involved, the
same models eagerly (`load_mtp_model`, `load_reference_model`, seeded adapters and head).
Saves what the test compares to OUT."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from weighted_mtp.models.adapter import load_mtp_model, load_reference_model
from weighted_mtp.storage.layout import ModelPaths
from weighted_mtp.train.builders import build_frozen_reference, build_policy, build_value_model
from weighted_mtp.train.config import FrozenConfig, LoraConfig, TrainConfig
from weighted_mtp.train.critic import ValueModel
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.lora import apply_lora, inject_lora
from weighted_mtp.train.losses import sequential_backward

CONFIG = TrainConfig(
    lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0),
    activation_checkpointing="blocks",
    precision="fp32",
    seed=3,
    seq_len=64,
    frozen=FrozenConfig(shard="always"),
)
TOKENS = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(5))


def full(module: torch.nn.Module, grads: bool = False) -> dict[str, torch.Tensor]:
    """Parameters (or gradients) by state_dict name, gathered from their shards."""
    out = {}
    for name, p in module.named_parameters():
        tensor = p.grad if grads else p
        if tensor is None:
            continue
        whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        out[name.replace("._checkpoint_wrapped_module", "")] = whole.detach().clone()
    return out


def held_fraction(module: torch.nn.Module) -> float:
    """Elements this rank holds / elements of the model."""
    local = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters()
    )
    return local / sum(p.numel() for p in module.parameters())


def policy_case(rank: int, mtp: ModelPaths) -> dict[str, object]:
    policy = build_policy(mtp, CONFIG, Dist(rank, 2, torch.device("cpu")))
    eager = apply_lora(load_mtp_model(mtp.root), CONFIG.lora, CONFIG.seed)
    scales = torch.tensor([0.1, 0.2], dtype=torch.float64)
    mask = torch.ones_like(TOKENS, dtype=torch.bool)
    policy.core.train()
    eager.core.train()
    # both ranks hold the same rows: FSDP2's average of their gradients is one rank's
    sequential_backward(policy.core, TOKENS, mask, None, scales)
    sequential_backward(eager.core, TOKENS, mask, None, scales)
    with torch.no_grad():
        logits = (policy.core.eval()(TOKENS), eager.core.eval()(TOKENS))
    return {
        "parameters": (full(policy.core), full(eager.core)),
        "grads": (full(policy.core, grads=True), full(eager.core, grads=True)),
        "logits": logits,
        "fraction": held_fraction(policy.core),
        "sharded": all(isinstance(p, DTensor) for p in policy.core.parameters()),
    }


def critic_case(rank: int, ref: ModelPaths) -> dict[str, object]:
    critic = build_value_model(ref, CONFIG, Dist(rank, 2, torch.device("cpu"))).core
    backbone = inject_lora(load_reference_model(ref.root).model, CONFIG.lora, CONFIG.seed)
    torch.manual_seed(CONFIG.seed)
    eager = ValueModel(backbone, CONFIG.critic.head_hidden)
    return {"parameters": (full(critic), full(eager)), "fraction": held_fraction(critic)}


def reference_case(rank: int, ref: ModelPaths) -> dict[str, object]:
    reference, placement = build_frozen_reference(ref, CONFIG, Dist(rank, 2, torch.device("cpu")))
    eager = load_reference_model(ref.root)
    with torch.no_grad():
        logits = (reference(TOKENS).logits, eager(TOKENS).logits)
    return {"logits": logits, "fraction": held_fraction(reference), "sharded": placement.sharded}


def main(rank: int, world: int, rendezvous: str, mtp: str, ref: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        mtp_paths, ref_paths = (ModelPaths(Path(p).name, Path(p)) for p in (mtp, ref))
        result = {
            "policy": policy_case(rank, mtp_paths),
            "critic": critic_case(rank, ref_paths),
            "reference": reference_case(rank, ref_paths),
        }
        torch.save(result, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7])
