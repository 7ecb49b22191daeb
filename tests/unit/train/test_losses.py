"""The weighted MTP loss against brute force, and the sequential-head backward's gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import weighted_mtp_loss

from weighted_mtp.models.adapter import mtp_loss
from weighted_mtp.train.losses import (
    head_scales,
    naive_backward,
    normaliser_terms,
    sequential_backward,
)

H, V = 3, 61


def random_logits(tokens, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*tokens.shape, H, V, generator=gen, dtype=torch.float64)


def brute_force(logits, tokens, mask, weights, normalize):
    """Loop over rows, positions and heads, straight from the definition."""
    bsz, seqlen = tokens.shape
    per_head = []
    for k in range(H):
        total, norm = 0.0, 0.0
        for b in range(bsz):
            for t in range(seqlen - k - 1):
                target = t + k + 1
                if not mask[b, target]:
                    continue
                if weights is None:
                    w = 1.0
                elif weights.dim() == 2:
                    w = float(weights[b, target])
                else:
                    w = float(weights[b, t, k])
                ce = -F.log_softmax(logits[b, t, k], -1)[tokens[b, target]].item()
                total += w * ce
                norm += {"count": 1.0, "weight": w, "selected": float(w != 0)}[normalize]
        per_head.append(total / norm if norm else None)
    present = [x for x in per_head if x is not None]
    return sum(present) / len(present), [x or 0.0 for x in per_head]


@pytest.mark.parametrize("normalize", ["count", "weight", "selected"])
@pytest.mark.parametrize("shape", [None, "2d", "3d"])
def test_loss_equals_brute_force(tokens_and_mask, normalize, shape):
    tokens, mask = tokens_and_mask
    logits = random_logits(tokens)
    gen = torch.Generator().manual_seed(2)
    weights = None
    if shape is not None:
        size = tokens.shape if shape == "2d" else (*tokens.shape, H)
        weights = torch.rand(size, generator=gen, dtype=torch.float64) * 2
        weights[weights < 0.5] = 0.0  # some zero weights, so `selected` differs from `count`
    loss, per_head = weighted_mtp_loss(logits, tokens, mask, weights, normalize)
    want, want_heads = brute_force(logits, tokens, mask, weights, normalize)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert per_head.tolist() == pytest.approx(want_heads, rel=1e-12)


def test_logits_on_the_right_targets_give_zero_loss(tokens_and_mask):
    tokens, mask = tokens_and_mask
    logits = torch.full((*tokens.shape, H, V), -1e4, dtype=torch.float64)
    for k in range(H):
        logits[:, : -k - 1, k].scatter_(-1, tokens[:, k + 1 :, None], 1e4)
    assert weighted_mtp_loss(logits, tokens, mask).loss.item() == 0.0
    shifted = logits.roll(1, dims=1)  # off by one position: large loss
    assert weighted_mtp_loss(shifted, tokens, mask).loss.item() > 1e3


def test_masked_targets_never_contribute(tokens_and_mask):
    tokens, mask = tokens_and_mask
    logits = random_logits(tokens)
    changed = tokens.clone()
    changed[~mask] = (tokens[~mask] + 1) % V  # every non-target token replaced
    assert torch.equal(
        weighted_mtp_loss(logits, tokens, mask).per_head,
        weighted_mtp_loss(logits, changed, mask).per_head,
    )


def test_count_mode_is_the_adapters_mtp_loss(tokens_and_mask):
    tokens, mask = tokens_and_mask
    logits = random_logits(tokens)
    weights = torch.rand(tokens.shape, dtype=torch.float64)
    ours = weighted_mtp_loss(logits, tokens, mask, weights, "count")
    theirs = mtp_loss(logits, tokens, loss_mask=mask, weights=weights)
    assert torch.allclose(ours.loss, theirs.loss.double(), rtol=1e-6)
    assert torch.allclose(ours.per_head, theirs.per_head.double(), rtol=1e-6)


def test_all_ones_weights_equal_the_unweighted_loss(tokens_and_mask):
    tokens, mask = tokens_and_mask
    logits = random_logits(tokens)
    ones = torch.ones(tokens.shape, dtype=torch.float64)
    for normalize in ("count", "weight", "selected"):
        weighted = weighted_mtp_loss(logits, tokens, mask, ones, normalize).loss
        assert weighted.item() == pytest.approx(weighted_mtp_loss(logits, tokens, mask).loss.item())


def test_weight_normalisation_is_invariant_to_scaling(tokens_and_mask):
    tokens, mask = tokens_and_mask
    logits = random_logits(tokens)
    weights = torch.rand((*tokens.shape, H), dtype=torch.float64)
    base = weighted_mtp_loss(logits, tokens, mask, weights, "weight").loss
    scaled = weighted_mtp_loss(logits, tokens, mask, weights * 7.5, "weight").loss
    assert scaled.item() == pytest.approx(base.item(), rel=1e-12)
    counted = weighted_mtp_loss(logits, tokens, mask, weights * 7.5, "count").loss
    assert counted.item() == pytest.approx(7.5 * base_count(logits, tokens, mask, weights))


def base_count(logits, tokens, mask, weights):
    return weighted_mtp_loss(logits, tokens, mask, weights, "count").loss.item()


def test_a_weight_on_one_target_changes_only_the_logits_that_predict_it(tokens_and_mask):
    tokens, mask = tokens_and_mask
    b, target = 1, 7  # a valid target in row 1
    grads = []
    for w in (1.0, 3.0):
        logits = random_logits(tokens).requires_grad_(True)
        weights = torch.ones(tokens.shape, dtype=torch.float64)
        weights[b, target] = w
        weighted_mtp_loss(logits, tokens, mask, weights, "count").loss.backward()
        grads.append(logits.grad)
    changed = (grads[0] - grads[1]).abs().sum(-1) > 0  # [B, S, H]
    expected = torch.zeros_like(changed)
    for k in range(H):
        expected[b, target - k - 1, k] = True
    assert torch.equal(changed, expected)


def test_micro_batch_shares_add_up_to_the_global_loss(tokens_and_mask, make_model):
    """Split into micro-batches, each divided by the global normaliser: same loss, same
    gradients as the whole batch at once (what makes N ranks equal 1 rank)."""
    tokens, mask = tokens_and_mask
    weights = torch.rand(tokens.shape, dtype=torch.float64)
    model = make_model()
    scales = head_scales(normaliser_terms(mask, weights, H, "weight"))
    whole = naive_backward(model, tokens, mask, weights, scales)
    whole_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    global_norm = sum(
        normaliser_terms(mask[i : i + 1], weights[i : i + 1], H, "weight") for i in range(3)
    )
    split = sum(
        naive_backward(
            model, tokens[i : i + 1], mask[i : i + 1], weights[i : i + 1], head_scales(global_norm)
        )
        for i in range(3)
    )
    assert torch.allclose(split, whole, rtol=1e-12)
    for p, g in zip(model.parameters(), whole_grads, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-10, atol=1e-14)


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def both_backwards(make_model, tokens, mask, weights, scales):
    """(sums, gradients) of the naive and of the sequential backward, each on a fresh model."""
    results = []
    for backward in (naive_backward, sequential_backward):
        model = make_model()
        sums = backward(model, tokens, mask, weights, scales)
        results.append((sums, grads_of(model)))
    return results


@pytest.mark.parametrize("n_heads", [1, 3])
def test_sequential_backward_equals_naive_in_float64(tokens_and_mask, make_model, n_heads):
    tokens, mask = tokens_and_mask
    weights = torch.rand((*tokens.shape, n_heads), dtype=torch.float64)
    scales = head_scales(normaliser_terms(mask, weights, n_heads, "count"))
    (naive_sums, naive), (seq_sums, seq) = both_backwards(make_model, tokens, mask, weights, scales)
    assert torch.allclose(naive_sums, seq_sums, rtol=1e-12)
    assert naive.keys() == seq.keys()
    assert len(naive) > 10
    for name in naive:
        assert torch.allclose(naive[name], seq[name], rtol=1e-9, atol=1e-13), name


def test_sequential_backward_equals_naive_with_lora(tokens_and_mask, make_model):
    from weighted_mtp.train.config import LoraConfig
    from weighted_mtp.train.lora import apply_lora

    tokens, mask = tokens_and_mask
    scales = head_scales(normaliser_terms(mask, None, H, "count"))
    results = []
    for backward in (naive_backward, sequential_backward):
        model = make_model()
        policy = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0), seed=3)
        with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
            for name, p in policy.core.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        backward(policy.core, tokens, mask, None, scales)
        results.append(grads_of(policy.core))
    naive, seq = results
    assert naive.keys() == seq.keys()
    assert all("lora_" in name for name in naive) and len(naive) == 2 * 7 * 4
    for name in naive:
        assert torch.allclose(naive[name], seq[name], rtol=1e-9, atol=1e-13), name
    assert not math.isclose(sum(g.abs().sum().item() for g in naive.values()), 0.0)


@pytest.mark.parametrize("seqlen", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [None, "2d", "3d"])
def test_sequences_no_longer_than_the_heads_give_the_brute_force_loss(seqlen, shape):
    """A micro-batch whose longest row has at most H tokens: the heads that reach past
    its end have no targets, the others score theirs (nothing raises)."""
    gen = torch.Generator().manual_seed(seqlen)
    tokens = torch.randint(3, V, (2, seqlen), generator=gen)
    mask = torch.ones(2, seqlen, dtype=torch.bool)
    mask[:, 0] = False  # BOS is never a target
    logits = random_logits(tokens, seed=seqlen)
    weights = None
    if shape is not None:
        size = tokens.shape if shape == "2d" else (*tokens.shape, H)
        weights = torch.rand(size, generator=gen, dtype=torch.float64) + 0.5
    loss, per_head = weighted_mtp_loss(logits, tokens, mask, weights, "weight")
    if seqlen == 1:  # no head has a target
        assert loss.item() == 0.0 and per_head.tolist() == [0.0] * H
        return
    want, want_heads = brute_force(logits, tokens, mask, weights, "weight")
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert per_head.tolist() == pytest.approx(want_heads, rel=1e-12)


def test_the_sequential_backward_takes_a_sequence_shorter_than_the_heads(make_model):
    tokens = torch.tensor([[1, 7], [1, 9]])  # [B, S] with S = 2 < 3 heads
    mask = torch.tensor([[False, True], [False, True]])
    scales = head_scales(normaliser_terms(mask, None, H, "count"))
    (naive_sums, naive), (seq_sums, seq) = both_backwards(make_model, tokens, mask, None, scales)
    assert naive_sums[1:].eq(0).all() and naive_sums[0] > 0  # heads 1, 2 have no target
    assert torch.allclose(naive_sums, seq_sums, rtol=1e-12)
    for name in naive:
        assert torch.allclose(naive[name], seq[name], rtol=1e-9, atol=1e-13), name
