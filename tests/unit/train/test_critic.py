"""The value model: objectives against loops, metrics against brute force, and it learns."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from reference import critic_loss

from weighted_mtp.train.config import LoraConfig
from weighted_mtp.train.critic import (
    ValueModel,
    auroc,
    critic_values,
    mc_loss,
    mc_loss_sum,
    pairwise_accuracy,
    pairwise_loss,
    response_mean,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_force_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_a_brute_force_pair_count_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    labels = torch.rand(40, generator=g) < 0.4
    assert auroc(scores, labels) == pytest.approx(
        brute_force_auroc(scores.tolist(), labels.tolist()), abs=1e-12
    )


def test_auroc_extremes():
    labels = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert auroc(torch.ones(4), labels) == 0.5
    with pytest.raises(ValueError, match="one positive and one negative"):
        auroc(torch.ones(2), torch.tensor([True, True]))


def test_pairwise_accuracy_counts_same_task_pairs_only():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.2, 0.8, 0.7])
    correct = torch.tensor([True, False, True, False, True, False, True])
    tasks = ["a", "a", "b", "b", "c", "c", "d"]
    # a: win, b: tie, c: loss; d has no incorrect solution
    assert pairwise_accuracy(scores, correct, tasks) == pytest.approx(1.5 / 3)
    assert pairwise_accuracy(scores[:1], correct[:1], tasks[:1]) is None


def test_mc_loss_is_the_mean_over_records_of_the_per_token_bce(batch):
    logits = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(0)).double()
    expected = []
    for b in range(logits.shape[0]):
        targets = batch.loss_mask[b].nonzero().squeeze(1)
        terms = [
            F.binary_cross_entropy_with_logits(
                logits[b, s - 1], batch.is_correct[b].double(), reduction="none"
            )
            for s in targets.tolist()
        ]
        expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(
        mc_loss(logits, batch.loss_mask, batch.is_correct), torch.stack(expected).mean()
    )


def test_mc_loss_sum_leaves_out_a_record_without_response_and_has_static_shapes(batch):
    """A record with no target adds nothing and is not counted, and every shape follows
    from the batch's: `wmtp train plan` traces the loss on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    logits = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(0)).double()
    mask = batch.loss_mask.clone()
    mask[0] = False
    logits[0] = float("nan")  # never read: the record has no response
    total, count = mc_loss_sum(logits, mask, batch.is_correct)
    rest, rest_count = mc_loss_sum(logits[1:], mask[1:], batch.is_correct[1:])
    assert int(count) == int(rest_count) == len(mask) - 1
    torch.testing.assert_close(total, rest)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_total, fake_count = mc_loss_sum(logits, mask, batch.is_correct)
    assert fake_total.shape == fake_count.shape == ()


def test_pairwise_loss_is_the_mean_over_same_task_pairs(batch):
    logits = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(0)).double()
    means = response_mean(logits, batch.loss_mask)
    terms = [
        -F.logsigmoid(means[i] - means[j])
        for i, j in itertools.product(range(len(means)), repeat=2)
        if batch.task_ids[i] == batch.task_ids[j]
        and batch.is_correct[i]
        and not batch.is_correct[j]
    ]
    assert terms, "the fixture batch must hold at least one pair"
    loss = pairwise_loss(logits, batch.loss_mask, batch.is_correct, batch.task_ids)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    all_correct = torch.ones_like(batch.is_correct)
    assert pairwise_loss(logits, batch.loss_mask, all_correct, batch.task_ids) is None


def test_response_mean_uses_v0_to_v_t_minus_1(batch):
    x = torch.arange(batch.tokens.numel(), dtype=torch.float64).view(batch.tokens.shape)
    for b in range(x.shape[0]):
        targets = batch.loss_mask[b].nonzero().squeeze(1)
        expected = x[b, targets - 1].mean()
        assert response_mean(x, batch.loss_mask)[b].item() == pytest.approx(expected.item())


def one_token_task(n_tasks: int, seed: int):
    """Per task one correct and one incorrect record that differ in one response token
    (3 for correct, 4 for incorrect) at a random place; BOS 1, EOS 2, padding 0."""
    g = torch.Generator().manual_seed(seed)
    rows, correct, tasks = [], [], []
    for task in range(n_tasks):
        prompt = torch.randint(5, 16, (4,), generator=g)
        response = torch.randint(5, 16, (6,), generator=g)
        key = int(torch.randint(0, 6, (), generator=g))
        for is_correct, token in ((True, 3), (False, 4)):
            body = response.clone()
            body[key] = token
            rows.append(torch.cat([torch.tensor([1]), prompt, body, torch.tensor([2])]))
            correct.append(is_correct)
            tasks.append(f"task-{seed}-{task}")
    tokens = torch.stack(rows)  # [2n, 12]
    loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
    loss_mask[:, 5:] = True  # the response and EOS
    return tokens, loss_mask, torch.tensor(correct), tasks


@pytest.mark.parametrize("objective", ["mc", "pairwise"])
def test_the_critic_learns_a_one_token_difference(objective, tiny_llama_config):
    from transformers import LlamaModel

    torch.manual_seed(0)
    critic = ValueModel(LlamaModel(tiny_llama_config(vocab=16)), head_hidden=32)
    train = one_token_task(32, seed=1)
    tokens, loss_mask, correct, tasks = one_token_task(32, seed=2)

    def validation_accuracy() -> float | None:
        values = critic_values(critic, tokens)
        return pairwise_accuracy(response_mean(values, loss_mask), correct, tasks)

    assert validation_accuracy() == 0.5  # a fresh critic says 0.5 everywhere
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-2)
    for _ in range(40):
        loss = critic_loss(objective, critic(train[0]), train[1], train[2], train[3])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = validation_accuracy()
    assert accuracy is not None and accuracy > 0.9
    if objective == "mc":  # pairwise training only orders the records of one task
        values = response_mean(critic_values(critic, tokens), loss_mask)
        assert auroc(values, correct) > 0.9


def test_lora_leaves_only_adapters_and_the_head_trainable(tiny_llama_config):
    from transformers import LlamaModel

    from weighted_mtp.train.lora import inject_lora

    lora = LoraConfig(enabled=True, r=4, alpha=8)
    backbone = inject_lora(LlamaModel(tiny_llama_config()), lora, seed=0)
    critic = ValueModel(backbone, head_hidden=8)
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trainable, "something must train"
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable)
    assert any(".down_proj.lora_B" in n for n in trainable)
    assert {"head.proj.weight", "head.out.weight"} <= trainable


def test_a_bf16_critic_still_returns_float32_values(tiny_llama_config, batch):
    from transformers import LlamaModel

    critic = ValueModel(LlamaModel(tiny_llama_config()), head_hidden=8).to(torch.bfloat16)
    values = critic_values(critic, batch.tokens)
    assert values.dtype == torch.float32 and values.shape == batch.tokens.shape
    assert ((values > 0) & (values < 1)).all()
