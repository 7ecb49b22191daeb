"""Rho-1 selection: exact counts, masked targets never chosen, Δ = 0 for identical models."""

from __future__ import annotations

import math

import pytest
import torch

from weighted_mtp.models.adapter import MtpTransformer
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.models.export_hf import (
    hf_llama_config,
    hf_tensor_sources,
    interleaved_to_half_split,
)
from weighted_mtp.train.rho1 import (
    excess_loss,
    policy_head0_cross_entropy,
    reference_cross_entropy,
    rho1_scores,
    select_top_fraction,
    selected_count,
    selection_statistics,
    target_cross_entropy,
)

TINY = MetaParams(
    dim=32, n_layers=3, n_heads=4, vocab_size=50, multiple_of=16, n_future_tokens=2, max_seq_len=64
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def head0_as_llama(model: MtpTransformer):
    """transformers' Llama made of the policy's trunk plus head 0 (what export-hf writes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    params = model.params
    config = hf_llama_config(params, n_layers=params.n_trunk_layers + 1, dtype="float32")
    llama = LlamaForCausalLM(LlamaConfig(**config))
    state = model.state_dict()
    hf_state = {}
    for source in hf_tensor_sources(params, 0):
        tensor = state[source.meta_name]
        if source.rotary_heads:
            tensor = interleaved_to_half_split(tensor, source.rotary_heads)
        hf_state[source.hf_name] = tensor
    llama.load_state_dict(hf_state, strict=True)
    return llama


@pytest.mark.parametrize("kappa", [0.05, 0.1, 0.3, 0.6, 0.7, 0.999, 1.0])
def test_exactly_ceil_kappa_n_valid_targets_are_selected(kappa, make_batch):
    batch = make_batch(rows=5, seqlen=20, seed=2)
    scores = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(0))
    scores[~batch.loss_mask] = 1e9  # masked positions must never win, however high
    selected = select_top_fraction(scores, batch.loss_mask, kappa)
    n_valid = int(batch.loss_mask.sum())
    assert int(selected.sum()) == math.ceil(round(kappa * n_valid, 9))
    assert not (selected & ~batch.loss_mask).any()
    chosen, rest = scores[selected], scores[batch.loss_mask & ~selected]
    if rest.numel():
        assert chosen.min() >= rest.max()


def test_selected_count_reads_kappa_as_written():
    assert selected_count(0.1, 10) == 1  # the float 0.1 is a hair above 1/10
    assert selected_count(0.6, 10) == 6
    assert selected_count(0.7, 10) == 7
    assert selected_count(0.6, 11) == 7
    assert selected_count(1.0, 0) == 0


def test_ties_go_to_the_earlier_row_and_position(batch):
    scores = torch.zeros(batch.tokens.shape)
    selected = select_top_fraction(scores, batch.loss_mask, 0.5)
    n = selected_count(0.5, int(batch.loss_mask.sum()))
    flat_valid = batch.loss_mask.flatten().nonzero().squeeze(1)
    expected = torch.zeros(batch.loss_mask.numel(), dtype=torch.bool)
    expected[flat_valid[:n]] = True
    assert torch.equal(selected.flatten(), expected)


def test_absolute_score_ranks_by_magnitude(batch):
    delta = torch.zeros(batch.tokens.shape)
    delta[batch.loss_mask] = torch.linspace(-3, 1, int(batch.loss_mask.sum()))
    signed = select_top_fraction(rho1_scores(delta, "signed"), batch.loss_mask, 0.2)
    absolute = select_top_fraction(rho1_scores(delta, "absolute"), batch.loss_mask, 0.2)
    assert (delta[signed] > 0).any() and (delta[absolute] < -2).all()
    stats = selection_statistics(delta, absolute, batch.loss_mask)
    assert stats["selected_frac"] == pytest.approx(int(absolute.sum()) / int(batch.loss_mask.sum()))
    assert stats["delta_selected_mean"] == pytest.approx(delta[absolute].mean().item())
    unselected = batch.loss_mask & ~absolute
    assert stats["delta_unselected_mean"] == pytest.approx(delta[unselected].mean().item())


def test_target_cross_entropy_aligns_with_the_target_token():
    vocab = 7
    tokens = torch.tensor([[1, 4, 6, 2]])
    logits = torch.full((1, 4, vocab), -30.0)
    for s in range(3):
        logits[0, s, tokens[0, s + 1]] = 30.0  # all mass on the next token
    ce = target_cross_entropy(logits, tokens)
    assert ce.shape == (1, 4) and ce[0, 0] == 0
    assert ce.max().item() < 1e-20
    logits[0, 1, tokens[0, 2]] = -30.0  # position 1 is now uniform: only target 2 costs
    ce = target_cross_entropy(logits, tokens)
    assert ce[0, 2].item() == pytest.approx(math.log(vocab))
    assert ce[0, 1] < 1e-20 and ce[0, 3] < 1e-20


def test_policy_equal_to_reference_gives_zero_excess_loss(batch):
    torch.manual_seed(0)
    policy = MtpTransformer(TINY).double()
    reference = head0_as_llama(policy).double()
    delta = excess_loss(
        policy_head0_cross_entropy(policy, batch.tokens),
        reference_cross_entropy(reference, batch.tokens),
        batch.loss_mask,
    )
    assert delta.abs().max().item() < 1e-5
    # a different reference gives a non-zero Δ: the check can fail
    other = head0_as_llama(MtpTransformer(TINY)).double()
    other_delta = excess_loss(
        policy_head0_cross_entropy(policy, batch.tokens),
        reference_cross_entropy(other, batch.tokens),
        batch.loss_mask,
    )
    assert other_delta[batch.loss_mask].abs().min() > 0


def test_scoring_runs_in_eval_mode_and_restores_training(batch, tiny_llama_config):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    reference = LlamaForCausalLM(tiny_llama_config(attention_dropout=0.5)).train()
    reference.model.layers[0].eval()  # a submodule's own mode survives too
    first = reference_cross_entropy(reference, batch.tokens)
    second = reference_cross_entropy(reference, batch.tokens)
    assert torch.equal(first, second)  # dropout would make these differ
    assert reference.training and not reference.model.layers[0].training
    assert reference.model.layers[1].training
    assert not first.requires_grad
