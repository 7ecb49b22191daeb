"""The stage-1 objectives over a global batch split into micro-batches: the same loss and
gradients as the joined batch (float64, against the definitions), so N ranks or M
accumulation steps train like one batch."""

from __future__ import annotations

import itertools

import pytest
import torch

from weighted_mtp.train.batches import Batch
from weighted_mtp.train.critic import (
    ValueModel,
    correct_incorrect_pairs,
    mc_loss,
    pair_loss,
    pairwise_loss,
    response_mean,
)
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.lora import TrainedModel
from weighted_mtp.train.objectives import NextTokenObjective, StepContext, ValueObjective
from weighted_mtp.train.rho1 import target_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 61
CTX = StepContext(0, Dist(0, 1, torch.device("cpu")), None)


def with_tasks(batch: Batch, tasks: list[str]) -> Batch:
    return Batch(
        batch.tokens,
        batch.loss_mask,
        batch.lengths,
        batch.is_correct,
        tuple(tasks),
        batch.sample_ids,
    )


def step(objective, model: TrainedModel, micro: list[Batch]) -> tuple[dict, dict]:
    """One step's loss record and gradients, micro-batch by micro-batch."""
    prepared = objective.prepare(model, micro, CTX)
    sums = sum(objective.backward(model, b, i, prepared, CTX) for i, b in enumerate(micro))
    grads = {n: p.grad.clone() for n, p in model.core.named_parameters() if p.grad is not None}
    model.core.zero_grad()
    return objective.train_record(prepared, sums), grads


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def assert_same(grads: dict, want: dict, rtol: float = 1e-9) -> None:
    assert grads.keys() == want.keys() and len(want) > 5
    for name in want:
        torch.testing.assert_close(grads[name], want[name], rtol=rtol, atol=1e-14)


@pytest.fixture
def critic(tiny_llama_config) -> TrainedModel:
    from transformers import LlamaModel

    torch.manual_seed(5)
    model = ValueModel(LlamaModel(tiny_llama_config(vocab=VOCAB)), head_hidden=16).double()
    torch.nn.init.normal_(model.head.out.weight, std=0.5)  # a critic with opinions
    return TrainedModel(model)


def same_task_pairs(batch: Batch) -> int:
    """(correct, incorrect) pairs of one task, counted one by one."""
    rows = range(len(batch.task_ids))
    return sum(
        batch.task_ids[i] == batch.task_ids[j]
        and bool(batch.is_correct[i])
        and not bool(batch.is_correct[j])
        for i, j in itertools.product(rows, rows)
    )


@pytest.mark.parametrize("micro_size", [1, 2, 4, 16])
def test_a_pairwise_critic_uses_every_same_task_pair_of_the_global_batch(
    micro_batch, critic, make_batch, micro_size
):
    """Four tasks of four records each, spread over the micro-batches: every same-task
    (correct, incorrect) pair of the 16 records counts, whichever micro-batch holds each
    side; the loss and its gradient are the joined batch's."""
    batch = with_tasks(make_batch(rows=16, vocab=VOCAB), [f"t{b % 4}" for b in range(16)])
    micro = [micro_batch(batch, slice(i, i + micro_size)) for i in range(0, 16, micro_size)]
    within = sum(same_task_pairs(b) for b in micro)
    total = same_task_pairs(batch)
    assert total > 0 and (within < total or micro_size == 16)  # pairs cross micro-batches
    record, grads = step(ValueObjective("pairwise"), critic, micro)
    want = pairwise_loss(
        critic.core(batch.tokens), batch.loss_mask, batch.is_correct, batch.task_ids
    )
    assert record["terms"] == total
    assert record["loss"] == pytest.approx(float(want.detach()), rel=1e-12)
    assert_same(grads, gradients(critic.core, want))


def test_a_pairwise_critic_with_dropout_backpropagates_the_forward_it_scored(
    micro_batch, tiny_llama_config, make_batch
):
    """The pair coefficients come from a first forward; the backward repeats it with the
    same dropout (its RNG state restored), so the gradient is still the loss's."""
    from transformers import LlamaModel

    torch.manual_seed(6)
    config = tiny_llama_config(vocab=VOCAB, attention_dropout=0.3)
    model = TrainedModel(ValueModel(LlamaModel(config), head_hidden=16).double().train())
    torch.nn.init.normal_(model.core.head.out.weight, std=0.5)
    batch = with_tasks(make_batch(rows=8, vocab=VOCAB), [f"t{b % 2}" for b in range(8)])
    micro = [micro_batch(batch, slice(i, i + 2)) for i in range(0, 8, 2)]
    torch.manual_seed(7)
    _, grads = step(ValueObjective("pairwise"), model, micro)
    # The same draws, forward by forward: what the first pass of each micro-batch saw.
    torch.manual_seed(7)
    means = []
    for b in micro:
        state = torch.get_rng_state()
        with torch.no_grad():
            model.core(b.tokens)
        torch.set_rng_state(state)
        means.append(response_mean(model.core(b.tokens), b.loss_mask))
    pairs = correct_incorrect_pairs(batch.is_correct, batch.task_ids)
    want = gradients(model.core, pair_loss(torch.cat(means), pairs))
    assert_same(grads, want)


@pytest.mark.parametrize("micro_size", [1, 3, 6])
def test_an_mc_critic_split_equals_the_joined_batch(micro_batch, critic, make_batch, micro_size):
    batch = make_batch(rows=6, vocab=VOCAB)
    micro = [micro_batch(batch, slice(i, i + micro_size)) for i in range(0, 6, micro_size)]
    record, grads = step(ValueObjective("mc"), critic, micro)
    want = mc_loss(critic.core(batch.tokens), batch.loss_mask, batch.is_correct)
    assert record["terms"] == 6
    assert record["loss"] == pytest.approx(float(want.detach()), rel=1e-12)
    assert_same(grads, gradients(critic.core, want))


@pytest.mark.parametrize("micro_size", [1, 2, 6])
def test_next_token_training_split_equals_the_joined_batch(
    micro_batch, tiny_llama_config, make_batch, micro_size
):
    from transformers import LlamaForCausalLM

    torch.manual_seed(8)
    reference = TrainedModel(LlamaForCausalLM(tiny_llama_config(vocab=VOCAB)).double())
    batch = make_batch(rows=6, vocab=VOCAB)
    micro = [micro_batch(batch, slice(i, i + micro_size)) for i in range(0, 6, micro_size)]
    record, grads = step(NextTokenObjective(), reference, micro)
    ce = target_cross_entropy(reference.core(batch.tokens).logits, batch.tokens)
    mask = batch.loss_mask
    want = (ce * mask).sum() / mask.sum()
    assert record["terms"] == int(mask.sum())
    assert record["loss"] == pytest.approx(float(want.detach()), rel=1e-6)
    # target_cross_entropy computes the CE in float32 whatever the logits' dtype
    assert_same(grads, gradients(reference.core, want), rtol=1e-5)
