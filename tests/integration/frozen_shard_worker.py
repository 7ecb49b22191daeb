"""Worker for test_frozen_shard: `python frozen_shard_worker.py RANK WORLD RENDEZVOUS OUT`.

One gloo rank: builds the same tiny critic and reference as its peer (same seed), scores
its own rows with a full replica and with the FSDP2-sharded helper, then takes one policy
step with the sharded helpers' weights. Saves what the test compares to OUT."""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from weighted_mtp.models.adapter import MtpTransformer
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.train.batches import Batch
from weighted_mtp.train.config import FrozenConfig, LoraConfig
from weighted_mtp.train.critic import ValueModel, critic_values
from weighted_mtp.train.distributed import shard
from weighted_mtp.train.frozen import freeze, place_frozen, shard_frozen
from weighted_mtp.train.lora import inject_lora
from weighted_mtp.train.losses import head_scales, normaliser_terms, sequential_backward
from weighted_mtp.train.rho1 import reference_cross_entropy
from weighted_mtp.train.weightings import Rho1, VerifiableCritic, WeighContext

VOCAB = 61
POLICY = MetaParams(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=16,
    n_future_tokens=2, max_seq_len=64,
)  # fmt: skip


def helpers(dtype: torch.dtype) -> tuple[ValueModel, torch.nn.Module]:
    """A LoRA critic with opinions and a reference, identical on every rank."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(3)
    # LoRA on the backbone as the 7B critic has it, its B matrices non-zero so they count
    backbone = inject_lora(
        LlamaModel(config), LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0), seed=0
    )
    critic = ValueModel(backbone, head_hidden=16)
    for name, param in critic.named_parameters():
        if "lora_B" in name or name == "head.out.weight":
            torch.nn.init.normal_(param, std=0.5)
    reference = LlamaForCausalLM(config)
    return freeze(critic.to(dtype)), freeze(reference.to(dtype))


def rank_batch(rank: int) -> Batch:
    """This rank's rows (3 on rank 0, 2 on rank 1), right-padded, targets after a prompt."""
    g = torch.Generator().manual_seed(100 + rank)
    rows, seqlen = 3 - rank, 20
    tokens = torch.randint(3, VOCAB, (rows, seqlen), generator=g)
    loss_mask = torch.zeros(rows, seqlen, dtype=torch.bool)
    for b in range(rows):
        loss_mask[b, 4 + b : seqlen - b] = True
    is_correct = torch.tensor([(b + rank) % 2 == 0 for b in range(rows)])
    names = tuple(f"r{rank}-{b}" for b in range(rows))
    return Batch(tokens, loss_mask, loss_mask.sum(1), is_correct, names, names)


def full(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full tensor (gathered from the shards when sharded)."""
    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for n, p in module.named_parameters()
    }


def sharded_fraction(module: torch.nn.Module) -> float:
    """Elements this rank holds / elements of the model (1.0 for a replica)."""
    local = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters()
    )
    return local / sum(p.numel() for p in module.parameters())


def exact_scores(batch: Batch) -> dict[str, object]:
    """float64: a replica's values, logits and CE against the FSDP2-sharded helpers'."""
    critic, reference = helpers(torch.float64)
    replica_critic, replica_reference = copy.deepcopy(critic), copy.deepcopy(reference)
    shard_frozen(critic)
    shard_frozen(reference)
    out: dict[str, object] = {
        "fraction": sharded_fraction(critic) + sharded_fraction(reference),
        "values": (
            critic_values(critic, batch.tokens),
            critic_values(replica_critic, batch.tokens),
        ),
        "ce": (
            reference_cross_entropy(reference, batch.tokens),
            reference_cross_entropy(replica_reference, batch.tokens),
        ),
    }
    with torch.no_grad():
        out["logits"] = (reference(batch.tokens).logits, replica_reference(batch.tokens).logits)
    out["resharded"] = all(isinstance(p, DTensor) for p in reference.parameters())
    return out


def policy_step(rank: int, batch: Batch) -> dict[str, object]:
    """One sharded policy step weighted by each sharded helper: weights equal the replica's,
    no gradient reaches the helper, its parameters stay bit-identical."""
    out: dict[str, object] = {}
    torch.manual_seed(0)
    policy = MtpTransformer(POLICY)
    shard(policy, low_precision=False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)

    def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    ctx = WeighContext(policy, 0, 2, torch.device("cpu"), all_reduce_sum)
    always, never = FrozenConfig(shard="always"), FrozenConfig(shard="never")
    for name, make in (
        ("verifiable", lambda m, f: VerifiableCritic(m, "weight", frozen=f)),
        ("rho1", lambda m, f: Rho1(m, "selected", frozen=f)),
    ):
        critic, reference = helpers(torch.float32)
        model = critic if name == "verifiable" else reference
        replica = make(copy.deepcopy(model), never).weigh_step([batch], ctx)[0]
        weighting = make(model, always)
        weighting.placement = place_frozen(model, always, ctx.device, None)
        model.requires_grad_(True)  # detachment alone must keep gradients out
        sharded = weighting.weigh_step([batch], ctx)[0]
        before = full(model)
        normaliser = all_reduce_sum(
            normaliser_terms(batch.loss_mask, sharded.values, 2, weighting.normalize)
        )
        policy_before = full(policy)
        sequential_backward(
            policy, batch.tokens, batch.loss_mask, sharded.values, head_scales(normaliser) * 2
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after = full(model)
        policy_after = full(policy)
        out[name] = {
            "placement": (weighting.placement.sharded, str(weighting.placement.dtype)),
            "fraction": sharded_fraction(model),
            "weights": (sharded.values, replica.values),
            "metrics": (sharded.metrics, replica.metrics),
            "no_grad": all(p.grad is None for p in model.parameters()),
            "unchanged": all(torch.equal(before[n], after[n]) for n in before),
            "policy_moved": any(
                not torch.equal(policy_before[n], policy_after[n]) for n in policy_after
            ),
        }
    return out


def main(rank: int, world: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        batch = rank_batch(rank)
        torch.save({"exact": exact_scores(batch), "step": policy_step(rank, batch)}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
