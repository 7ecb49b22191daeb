"""What one optimizer step computes, per kind of model: the weighted MTP loss of the policy
(`MtpObjective`, with the experiment's `Weighting`), the critic's value loss
(`ValueObjective`, `mc` or `pairwise`) and the reference's next-token loss
(`NextTokenObjective`).

The one trainer (`trainer.Trainer`) drives all of them the same way. Per step it hands the
objective this rank's micro-batches of the global batch:

1. `prepare(model, batches, ctx)`: what the step's loss needs from the WHOLE global batch
   before any gradient (every rank calls it; collectives allowed): the MTP weights and
   normalisers, how many terms the loss averages over, a pairwise critic's coefficients.
2. `backward(model, batch, index, prepared, ctx)`: forward and backward of micro-batch
   `index`'s share of the global loss (the shares of all micro-batches on all ranks add up
   to the loss of the global batch), times `ctx.world`: FSDP2 averages gradients over the
   ranks, the shares are meant to sum. Returns float64 sums the trainer adds over
   micro-batches and ranks.
3. `train_record(prepared, sums)`: the step's metrics from those global sums.

So one rank accumulating a global batch and N ranks holding its parts compute the same
loss and gradients, for every objective. Validation: `validation_terms(model, batch)` for
each validation batch (small and picklable: gathered from every rank), then
`validation_record` from all of them in batch order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import Tensor

from weighted_mtp.train.collectives import all_gather_1d
from weighted_mtp.train.config import Objective as CriticObjective
from weighted_mtp.train.critic import (
    auroc,
    correct_incorrect_pairs,
    critic_values,
    mc_loss_sum,
    pair_loss,
    pairwise_accuracy,
    response_mean,
    task_codes,
)
from weighted_mtp.train.frozen import Placement
from weighted_mtp.train.losses import (
    head_loss_sum,
    head_scales,
    naive_backward,
    normaliser_terms,
    sequential_backward,
)
from weighted_mtp.train.rho1 import target_cross_entropy
from weighted_mtp.train.weightings import StepWeighting, WeighContext, Weighting, Weights

if TYPE_CHECKING:
    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.train.batches import Batch
    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.lora import TrainedModel


@dataclass(frozen=True)
class StepContext:
    """Where a step runs: its number, this rank (device, collectives, rank count) and the
    autocast dtype of the trainer's forwards (None: float32)."""

    step: int
    dist: Dist
    autocast: torch.dtype | None

    @property
    def world(self) -> int:
        return self.dist.world

    def global_sum(self, values: list[float]) -> Tensor:
        """float64 `values` summed over ranks."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.dist.device)
        return self.dist.all_reduce_sum(tensor)


class TrainingObjective(Protocol):
    @property
    def name(self) -> str:
        """The objective (or the policy's weighting) in summary.json."""
        ...

    def prepare(self, model: TrainedModel, batches: list[Batch], ctx: StepContext) -> Any: ...

    def backward(
        self, model: TrainedModel, batch: Batch, index: int, prepared: Any, ctx: StepContext
    ) -> Tensor: ...

    def train_record(self, prepared: Any, sums: Tensor) -> dict[str, Any]: ...

    def validation_terms(self, model: TrainedModel, batch: Batch) -> Any: ...

    def validation_record(self, terms: list[Any]) -> dict[str, Any]: ...

    def summary(self) -> dict[str, Any]:
        """What summary.json adds for this objective."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# -- the MTP policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class MtpStep:
    weights: list[Weights]
    normaliser: Tensor  # [heads] float64, global
    scales: Tensor  # [heads]: each head's share of the mean-over-heads loss
    metrics: dict[str, float]


@dataclass
class MtpObjective:
    """The weighted MTP loss (`losses`): per head, the weighted CE of its targets over the
    head's global normaliser, averaged over heads; the weighting makes the experiment."""

    weighting: Weighting
    n_heads: int
    naive_heads: bool = False

    @property
    def name(self) -> str:
        return self.weighting.name

    def _weigh(self, core: MtpTransformer, batches: list[Batch], ctx: StepContext) -> list[Weights]:
        weigh_ctx = WeighContext(
            core, ctx.step, self.n_heads, ctx.dist.device, ctx.dist.all_reduce_sum, ctx.autocast
        )
        if isinstance(self.weighting, StepWeighting):
            return self.weighting.weigh_step(batches, weigh_ctx)
        return [self.weighting.weigh(batch, weigh_ctx) for batch in batches]

    def prepare(self, model: TrainedModel, batches: list[Batch], ctx: StepContext) -> MtpStep:
        weights = self._weigh(_mtp(model), batches, ctx)
        normaliser = torch.zeros(self.n_heads, dtype=torch.float64, device=ctx.dist.device)
        for batch, w in zip(batches, weights, strict=True):
            normaliser += normaliser_terms(
                batch.loss_mask, w.values, self.n_heads, self.weighting.normalize
            )
        ctx.dist.all_reduce_sum(normaliser)
        # The weighting's metrics are statistics of the global batch: their mean over the
        # step's micro-batches and the ranks.
        names = sorted(weights[0].metrics) if weights else []
        sums = ctx.global_sum([sum(w.metrics.get(n, 0.0) for w in weights) for n in names])
        count = len(weights) * ctx.world
        metrics = {n: float(v) / count for n, v in zip(names, sums, strict=True)}
        return MtpStep(weights, normaliser, head_scales(normaliser), metrics)

    def backward(
        self, model: TrainedModel, batch: Batch, index: int, prepared: MtpStep, ctx: StepContext
    ) -> Tensor:
        backward = naive_backward if self.naive_heads else sequential_backward
        values = prepared.weights[index].values
        scales = prepared.scales * ctx.world
        return backward(_mtp(model), batch.tokens, batch.loss_mask, values, scales).double()

    def train_record(self, prepared: MtpStep, sums: Tensor) -> dict[str, Any]:
        normaliser = prepared.normaliser
        per_head = torch.where(normaliser > 0, sums / normaliser.clamp(min=1e-30), 0.0)
        record: dict[str, Any] = {
            "loss": float((sums * prepared.scales).sum()),
            "per_head": [float(x) for x in per_head],
            "normalize": self.weighting.normalize,
        }
        if prepared.metrics:
            record["weights"] = prepared.metrics
        return record

    def validation_terms(self, model: TrainedModel, batch: Batch) -> list[list[float]]:
        """Count-normalised CE per head: each head's CE sum and target count."""
        core = _mtp(model)
        h, cos, sin = core.trunk(batch.tokens)
        sums = [
            float(
                head_loss_sum(
                    core.head_logits(h, k, cos, sin), batch.tokens, batch.loss_mask, None, k
                )
            )
            for k in range(self.n_heads)
        ]
        counts = normaliser_terms(batch.loss_mask, None, self.n_heads, "count")
        return [sums, [float(c) for c in counts]]

    def validation_record(self, terms: list[list[list[float]]]) -> dict[str, Any]:
        totals = torch.tensor(terms, dtype=torch.float64).sum(0)  # [2, heads]
        per_head = totals[0] / totals[1].clamp(min=1)
        active = totals[1] > 0
        return {
            "loss": float(per_head[active].mean()) if active.any() else None,
            "per_head": [float(x) for x in per_head],
            "targets": int(totals[1, 0]),
        }

    def summary(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "weighting": self.weighting.name,
            "normalize": self.weighting.normalize,
        }
        placement: Placement | None = getattr(self.weighting, "placement", None)
        if placement is not None:  # a frozen helper's
            record["frozen"] = placement.as_record()
        return record

    def state_dict(self) -> dict[str, Any]:
        return self.weighting.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weighting.load_state_dict(state)


def _mtp(model: TrainedModel) -> MtpTransformer:
    """The policy's MtpTransformer (peft's LoRA layers inside, FSDP2 under torchrun)."""
    return cast("MtpTransformer", model.core)


# -- the critic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueStep:
    terms: float  # records with a response (mc) or same-task pairs (pairwise), global
    loss: float | None = None  # pairwise: the global batch's loss
    coefficients: tuple[Tensor, ...] = ()  # pairwise: dloss/dm of each micro-batch's records
    rng: tuple[RngState, ...] = ()  # pairwise: each micro-batch's RNG before its forward


RngState = tuple[Tensor, Tensor | None]


def rng_state(device: torch.device) -> RngState:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def restore_rng(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class ValueObjective:
    """The critic's loss over the global batch.

    `mc`: the mean over records of the mean BCE of V_{t−1} against R; each record's term
    over the global count of records with a response.
    `pairwise`: the mean over EVERY same-task (correct, incorrect) pair of the global batch
    of −log σ(m⁺ − m⁻), m a record's mean value logit. Its records sit in different
    micro-batches and ranks, so the loss is not a sum of per-micro-batch terms: `prepare`
    runs each micro-batch forward without gradient, gathers every record's m from all
    ranks, and takes the loss and c_i = dloss/dm_i on the joined batch; `backward` runs the
    forward again (the same dropout: its RNG state is restored) and backpropagates Σ c_i·m_i,
    whose gradient is the loss's. One extra forward per micro-batch buys exact pairs for any
    split, with one micro-batch's activations in memory at a time.
    """

    objective: CriticObjective
    name: str = "critic"

    def prepare(self, model: TrainedModel, batches: list[Batch], ctx: StepContext) -> ValueStep:
        if self.objective == "mc":
            with_response = sum(int(response_rows(b).sum()) for b in batches)
            return ValueStep(float(ctx.global_sum([with_response])[0]))
        device = ctx.dist.device
        states, means = self.forward_without_gradient(model, batches, device)
        mine = torch.cat(means).double()  # [rows of this rank]
        m, offset = all_gather_1d(mine)  # [rows of the global batch]
        correct, _ = all_gather_1d(torch.cat([b.is_correct for b in batches]).long())
        tasks, _ = all_gather_1d(task_codes([t for b in batches for t in b.task_ids], device))
        pairs = correct_incorrect_pairs(correct.bool(), tasks)  # [N, N]
        m.requires_grad_(True)
        with torch.enable_grad():
            loss = pair_loss(m, pairs)
            (coefficients,) = torch.autograd.grad(loss, m)
        rows = [len(b.task_ids) for b in batches]
        mine_c = torch.split(coefficients[offset : offset + sum(rows)], rows)
        return ValueStep(float(pairs.sum()), float(loss.detach()), tuple(mine_c), states)

    @staticmethod
    def forward_without_gradient(
        model: TrainedModel, batches: list[Batch], device: torch.device
    ) -> tuple[tuple[RngState, ...], list[Tensor]]:
        """Pairwise: each micro-batch's RNG state before its forward, and its records' mean
        value logits m `[B]`, from a forward without gradient."""
        states, means = [], []
        with torch.no_grad():
            for batch in batches:
                states.append(rng_state(device))
                means.append(response_mean(model.core(batch.tokens), batch.loss_mask))
        return tuple(states), means

    def backward(
        self, model: TrainedModel, batch: Batch, index: int, prepared: ValueStep, ctx: StepContext
    ) -> Tensor:
        if self.objective == "mc":
            total, _ = mc_loss_sum(model.core(batch.tokens), batch.loss_mask, batch.is_correct)
            torch.autograd.backward(total * (ctx.world / max(prepared.terms, 1.0)))
            return total.detach().double().reshape(1)
        restore_rng(prepared.rng[index], ctx.dist.device)
        m = response_mean(model.core(batch.tokens), batch.loss_mask)  # [B]
        coefficients = prepared.coefficients[index].to(m.dtype)
        torch.autograd.backward((m * coefficients).sum() * ctx.world)
        return torch.zeros(1, dtype=torch.float64, device=ctx.dist.device)

    def train_record(self, prepared: ValueStep, sums: Tensor) -> dict[str, Any]:
        mc = float(sums[0]) / max(prepared.terms, 1.0)
        loss = mc if prepared.loss is None else prepared.loss
        return {"loss": loss, "terms": prepared.terms}

    def validation_terms(
        self, model: TrainedModel, batch: Batch
    ) -> tuple[list[float], list[bool], list[str]]:
        """Each record's mean value and outcome, for pairwise accuracy and AUROC."""
        scores = response_mean(critic_values(model.core, batch.tokens), batch.loss_mask)
        return scores.tolist(), batch.is_correct.tolist(), list(batch.task_ids)

    def validation_record(
        self, terms: list[tuple[list[float], list[bool], list[str]]]
    ) -> dict[str, Any]:
        scores = torch.tensor([s for t in terms for s in t[0]], dtype=torch.float64)
        correct = torch.tensor([c for t in terms for c in t[1]], dtype=torch.bool)
        tasks = [task for t in terms for task in t[2]]
        record: dict[str, Any] = {"pairwise_accuracy": pairwise_accuracy(scores, correct, tasks)}
        if correct.any() and not correct.all():
            record["auroc"] = auroc(scores, correct)
        return record

    def summary(self) -> dict[str, Any]:
        return {"objective": self.objective}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _stateless(self.name, state)


def response_rows(batch: Batch) -> Tensor:
    """`[B]` bool: the records with at least one target."""
    return batch.loss_mask.any(1)


# -- the reference -------------------------------------------------------------------------


@dataclass
class NextTokenObjective:
    """Next-token cross-entropy of a causal LM over the targets of the global batch."""

    name: str = "ref-tune"

    def prepare(self, model: TrainedModel, batches: list[Batch], ctx: StepContext) -> float:
        return float(ctx.global_sum([sum(float(b.loss_mask.sum()) for b in batches)])[0])

    def backward(
        self, model: TrainedModel, batch: Batch, index: int, prepared: float, ctx: StepContext
    ) -> Tensor:
        total = next_token_sum(model, batch)
        torch.autograd.backward(total * (ctx.world / max(prepared, 1.0)))
        return total.detach().double().reshape(1)

    def train_record(self, prepared: float, sums: Tensor) -> dict[str, Any]:
        return {"loss": float(sums[0]) / max(prepared, 1.0), "terms": prepared}

    def validation_terms(self, model: TrainedModel, batch: Batch) -> tuple[float, float]:
        return float(next_token_sum(model, batch)), float(batch.loss_mask.sum())

    def validation_record(self, terms: list[tuple[float, float]]) -> dict[str, Any]:
        total, count = (sum(t[i] for t in terms) for i in (0, 1))
        return {"loss": total / max(count, 1.0), "targets": int(count)}

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _stateless(self.name, state)


def next_token_sum(model: TrainedModel, batch: Batch) -> Tensor:
    """Sum of next-token CE over the batch's targets."""
    ce = target_cross_entropy(model.core(batch.tokens).logits, batch.tokens)  # [B, S]
    return (ce * batch.loss_mask).sum()


def _stateless(name: str, state: dict[str, Any]) -> None:
    if state:
        raise ValueError(f"the {name} objective has no state, got {sorted(state)}")
