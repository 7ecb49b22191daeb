"""The Verifiable Critic and Rho-1 weightings in the trainer's protocol: global-batch
statistics for any micro-batch split, and frozen helpers that no gradient ever reaches."""

from __future__ import annotations

import pytest
import torch

from weighted_mtp.train.advantages import RunningWhitening, critic_token_weights
from weighted_mtp.train.config import CriticConfig, Rho1Config, build_config
from weighted_mtp.train.critic import ValueModel, critic_values
from weighted_mtp.train.losses import head_scales, normaliser_terms, sequential_backward
from weighted_mtp.train.rho1 import selected_count
from weighted_mtp.train.weightings import (
    Rho1,
    StepWeighting,
    VerifiableCritic,
    WeighContext,
    Weighting,
    join_rows,
    split_rows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 61  # the conftest's TINY policy


def context(model, n_heads: int = 3) -> WeighContext:
    return WeighContext(model, 0, n_heads, torch.device("cpu"), lambda t: t)


@pytest.fixture
def helpers(tiny_llama_config):
    from transformers import LlamaForCausalLM, LlamaModel

    torch.manual_seed(3)
    critic = ValueModel(LlamaModel(tiny_llama_config(vocab=VOCAB)), head_hidden=16)
    torch.nn.init.normal_(critic.head.out.weight)  # a critic with opinions
    reference = LlamaForCausalLM(tiny_llama_config(vocab=VOCAB))
    return critic, reference


def test_both_weightings_follow_the_protocol(helpers):
    critic, reference = helpers
    for weighting in (VerifiableCritic(critic, "weight"), Rho1(reference, "selected")):
        assert isinstance(weighting, Weighting) and isinstance(weighting, StepWeighting)
    # Each experiment's normaliser is its packaged config's.
    normalize = {e: build_config(e, small=True).normalize for e in ("verifiable", "rho1")}
    assert normalize == {"verifiable": "weight", "rho1": "selected"}


def test_join_and_split_rows_round_trip(micro_batch, make_batch):
    parts = [
        micro_batch(make_batch(vocab=VOCAB), slice(0, 2)).tokens,
        torch.ones(3, 5, dtype=torch.long),
    ]
    joined = join_rows(parts)
    assert joined.shape == (5, max(p.shape[1] for p in parts))
    assert all(torch.equal(a, b) for a, b in zip(split_rows(joined, parts), parts, strict=True))


def test_critic_weights_of_a_split_step_equal_those_of_the_joined_batch(
    micro_batch, helpers, make_batch
):
    critic, _ = helpers
    batch = make_batch(vocab=VOCAB, rows=6)
    micro = [micro_batch(batch, slice(0, 2)), micro_batch(batch, slice(2, 6))]
    weighting = VerifiableCritic(critic, "weight")
    split = weighting.weigh_step(micro, context(None))
    expected, metrics = critic_token_weights(
        critic_values(critic, batch.tokens),
        batch.loss_mask,
        batch.is_correct,
        CriticConfig(),
        RunningWhitening(),
    )
    for part, rows, w in zip(micro, (slice(0, 2), slice(2, 6)), split, strict=True):
        width = part.tokens.shape[1]
        torch.testing.assert_close(w.values, expected[rows, :width], rtol=1e-5, atol=1e-6)
        assert (expected[rows, width:] == 0).all()
        assert w.metrics == pytest.approx(metrics)
    assert weighting.whitening.updates == 1
    restored = VerifiableCritic(critic, "weight")
    restored.load_state_dict(weighting.state_dict())
    assert restored.whitening == weighting.whitening


def test_rho1_selects_over_the_whole_step_not_per_micro_batch(
    micro_batch, helpers, make_model, make_batch
):
    _, reference = helpers
    policy = make_model(dtype=torch.float32)
    batch = make_batch(vocab=VOCAB, rows=6)
    micro = [micro_batch(batch, slice(0, 3)), micro_batch(batch, slice(3, 6))]
    weighting = Rho1(reference, "selected", Rho1Config(kappa=0.3))
    split = weighting.weigh_step(micro, context(policy))
    whole = weighting.weigh_step([batch], context(policy))[0].values
    joined = torch.cat(
        [torch.nn.functional.pad(w.values, (0, whole.shape[1] - w.values.shape[1])) for w in split]
    )
    assert torch.equal(joined, whole)
    assert int(whole.sum()) == selected_count(0.3, int(batch.loss_mask.sum()))
    assert set(whole.unique().tolist()) <= {0.0, 1.0}
    assert split[0].metrics["delta_selected_mean"] > split[0].metrics["delta_unselected_mean"]


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_no_gradient_reaches_the_critic_or_the_reference(helpers, make_model, make_batch):
    """A full policy step (weights, sequential backward, AdamW) leaves both helpers'
    parameters bit-identical, even with requires_grad switched back on."""
    critic, reference = helpers
    policy = make_model(dtype=torch.float32)
    batch = make_batch(vocab=VOCAB)
    weightings = (VerifiableCritic(critic, "weight"), Rho1(reference, "selected"))
    for weighting, helper in zip(weightings, (critic, reference), strict=True):
        assert not any(p.requires_grad for p in helper.parameters())
        helper.requires_grad_(True)  # detachment alone must protect it
        before = parameters(helper)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        weights = weighting.weigh_step([batch], context(policy))[0].values
        assert weights is not None and not weights.requires_grad
        normaliser = normaliser_terms(batch.loss_mask, weights, 3, weighting.normalize)
        sequential_backward(policy, batch.tokens, batch.loss_mask, weights, head_scales(normaliser))
        policy_before = parameters(policy)
        optimizer.step()
        assert any(not torch.equal(policy_before[n], p) for n, p in policy.named_parameters())
        assert all(p.grad is None for p in helper.parameters())
        after = parameters(helper)
        assert all(torch.equal(before[n], after[n]) for n in before)


class RecordingStepWeighting:
    """Uniform weights; records how many micro-batches each call received."""

    name = "recording"
    normalize = "count"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def weigh_step(self, batches, ctx):
        from weighted_mtp.train.weightings import Weights

        self.calls.append(len(batches))
        return [Weights(None) for _ in batches]

    def weigh(self, batch, ctx):
        raise AssertionError("the trainer must call weigh_step for a StepWeighting")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_trainer_hands_a_step_weighting_all_micro_batches_at_once(train_storage, tmp_path):
    from weighted_mtp.train.config import load_config, with_overrides
    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.experiments import weighted_mtp
    from weighted_mtp.train.run_setup import resolve_inputs
    from weighted_mtp.train.trainer import Trainer, prepare_run_dir

    single = Dist(rank=0, world=1, device=torch.device("cpu"))
    over = {"batch_size": 4, "micro_batch_size": 2, "max_steps": 2, "eval_every": 0}
    config = with_overrides(load_config(None, micro=True), over, "test")
    assets = resolve_inputs(train_storage, config.model, config.data, config.small)
    prepare_run_dir(tmp_path / "run", config, single)
    weighting = RecordingStepWeighting()
    make = weighted_mtp(lambda setup: weighting)
    trainer = Trainer(train_storage, config, assets, tmp_path / "run", single, make)
    trainer.train_step()
    trainer.train_step()
    assert weighting.calls == [2, 2]


def test_rho1_scores_the_policy_and_the_reference_in_the_trainers_precision(
    helpers, make_model, make_batch
):
    """Under the trainer's bf16 autocast (`WeighContext.policy_dtype`) both cross-entropies
    come from forwards in that precision: Δ is the policy's CE under the autocast minus the
    bf16 reference's CE under the autocast, never a float32 policy against a bf16 reference."""
    import copy

    from weighted_mtp.train.rho1 import (
        excess_loss,
        policy_head0_cross_entropy,
        reference_cross_entropy,
        rho1_token_weights,
    )

    _, reference = helpers
    policy = make_model(dtype=torch.float32)
    batch = make_batch(vocab=VOCAB)
    low_reference = copy.deepcopy(reference).bfloat16()  # what `frozen.dtype: auto` places
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = excess_loss(
            policy_head0_cross_entropy(policy, batch.tokens),
            reference_cross_entropy(low_reference, batch.tokens),
            batch.loss_mask,
        )
    settings = Rho1Config(kappa=0.5)
    want_weights, want_metrics = rho1_token_weights(delta, batch.loss_mask, settings)
    ctx = WeighContext(policy, 0, 3, torch.device("cpu"), lambda t: t, torch.bfloat16)
    got = Rho1(reference, "selected", settings).weigh_step([batch], ctx)[0]
    assert torch.equal(got.values, want_weights)
    assert got.metrics == want_metrics
