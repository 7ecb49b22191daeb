"""The frozen critic / reference: the placement rule (dtype, shard or replicate) and what a
bf16 helper computes on CPU, where GPUs would put it, against float32."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from weighted_mtp.errors import WmtpError
from weighted_mtp.train.config import FrozenConfig, TrainConfig, with_overrides
from weighted_mtp.train.critic import ValueModel, critic_values
from weighted_mtp.train.distributed import transformer_blocks
from weighted_mtp.train.frozen import (
    MIB,
    parameter_mib,
    place_frozen,
    scoring_dtype,
    shard_decision,
)
from weighted_mtp.train.rho1 import (
    excess_loss,
    policy_head0_cross_entropy,
    reference_cross_entropy,
    selected_count,
)
from weighted_mtp.train.weightings import Rho1, WeighContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 61  # the conftest's TINY policy


@pytest.fixture
def reference(tiny_llama_config):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab=VOCAB)).eval()


@pytest.fixture
def critic(tiny_llama_config):
    from transformers import LlamaModel

    torch.manual_seed(1)
    critic = ValueModel(LlamaModel(tiny_llama_config(vocab=VOCAB)), head_hidden=16)
    torch.nn.init.normal_(critic.head.out.weight)  # values away from 0.5
    return critic.eval()


def test_auto_dtype_follows_the_policy_and_explicit_choices_win():
    assert scoring_dtype("auto", None) == torch.float32  # fp32 policy (CPU, precision fp32)
    assert scoring_dtype("auto", torch.bfloat16) == torch.bfloat16  # bf16 autocast on a GPU
    assert scoring_dtype("fp32", torch.bfloat16) == torch.float32
    assert scoring_dtype("bf16", None) == torch.bfloat16


@pytest.mark.parametrize(
    ("shard", "mib", "world", "sharded"),
    [
        ("always", 0.1, 1, False),  # one process: nothing to shard across
        ("always", 0.1, 2, True),
        ("never", 1e6, 8, False),
        ("auto", 1024.0, 2, False),  # at the threshold: still replicated
        ("auto", 1024.5, 2, True),
        ("auto", 5e3, 1, False),
    ],
)
def test_shard_or_replicate(shard, mib, world, sharded):
    assert shard_decision(FrozenConfig(shard=shard), mib, world) is sharded


def test_auto_threshold_is_configurable():
    config = FrozenConfig(shard="auto", shard_min_mib=0.25)
    assert shard_decision(config, 0.3, 2) and not shard_decision(config, 0.2, 2)


def test_parameter_size_counts_every_parameter_in_the_scoring_dtype(reference):
    numel = sum(p.numel() for p in reference.parameters())
    assert parameter_mib(reference, torch.float32) == numel * 4 / MIB
    assert parameter_mib(reference, torch.bfloat16) == numel * 2 / MIB


def test_the_blocks_sharded_are_the_decoder_layers(reference, critic):
    assert transformer_blocks(reference) == list(reference.model.layers)
    assert transformer_blocks(critic) == list(critic.backbone.layers)
    assert transformer_blocks(torch.nn.Linear(2, 2)) == []


def test_one_process_places_a_replica_in_the_scoring_dtype(reference):
    placement = place_frozen(reference, FrozenConfig(shard="always"), torch.device("cpu"), None)
    assert not placement.sharded and placement.dtype == torch.float32
    placement = place_frozen(reference, FrozenConfig(), torch.device("cpu"), torch.bfloat16)
    assert placement.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in reference.parameters())
    assert placement.as_record() == {
        "dtype": "bfloat16",
        "mib": round(parameter_mib(reference, torch.bfloat16), 3),
        "sharded": False,
    }


def test_frozen_settings_are_typed_config_keys():
    config = with_overrides(
        TrainConfig(), {"frozen.shard": "always", "frozen.shard_min_mib": 64}, "test"
    )
    assert config.frozen == FrozenConfig(shard="always", shard_min_mib=64.0)
    assert config.to_dict()["frozen"] == {"shard": "always", "shard_min_mib": 64.0, "dtype": "auto"}
    wants = "'frozen.shard' wants 'auto' | 'always' | 'never'"
    with pytest.raises(WmtpError, match=re.escape(wants)):
        with_overrides(TrainConfig(), {"frozen.shard": "sometimes"}, "test")
    with pytest.raises(WmtpError, match=re.escape("'frozen.dtype' wants 'auto' | 'bf16' | 'fp32'")):
        with_overrides(TrainConfig(), {"frozen.dtype": "fp16"}, "test")
    with pytest.raises(WmtpError, match=re.escape("'frozen.shard_min_mib' must be >= 0")):
        with_overrides(TrainConfig(), {"frozen.shard_min_mib": -1}, "test")


def test_a_bf16_reference_gives_float32_cross_entropies_close_to_float32(reference, batch):
    """The CE of a bf16 reference is the exact float32 CE of its bf16 logits: CE is
    2-Lipschitz in the logits (max norm), so |ΔCE| <= 2·max|Δlogit| at every target. A
    log-softmax run in bf16 breaks that by ~0.01 on this model (measured), so the check
    can fail; the total error stays below 0.01 nats (measured <= 0.002)."""
    low = copy.deepcopy(reference).to(torch.bfloat16)
    tokens = batch.tokens  # ids < 50: within every tiny model's vocabulary
    ce, ce_low = reference_cross_entropy(reference, tokens), reference_cross_entropy(low, tokens)
    assert ce_low.dtype == torch.float32
    with torch.no_grad():
        logit_error = (low(tokens).logits.float() - reference(tokens).logits).abs().amax(-1)
    bound = 2 * logit_error[:, :-1]  # [B, S-1]: the logits that predict targets 1..S-1
    assert ((ce_low - ce).abs()[:, 1:] <= bound + 1e-6).all()
    assert (ce_low - ce).abs().max() < 0.01


def test_a_bf16_critic_gives_values_close_to_float32(critic, batch):
    """bf16 keeps 8 significant bits (relative rounding 2^-9 per operation); the values of
    this critic move by <= 0.008 (measured over seeds), bounded here by 0.02."""
    low = copy.deepcopy(critic).to(torch.bfloat16)
    tokens = batch.tokens  # ids < 50: within every tiny model's vocabulary
    values, values_low = critic_values(critic, tokens), critic_values(low, tokens)
    assert values_low.dtype == torch.float32
    assert (values_low - values).abs().max() < 0.02
    assert not torch.equal(values_low, values)  # it really ran in bf16


def test_delta_is_float32_whatever_the_policy_and_reference_dtypes(reference, make_model, batch):
    policy = make_model(dtype=torch.float32)
    tokens, mask = batch.tokens, batch.loss_mask
    exact = excess_loss(
        policy_head0_cross_entropy(policy, tokens), reference_cross_entropy(reference, tokens), mask
    )
    low_policy = copy.deepcopy(policy).bfloat16()
    low_reference = copy.deepcopy(reference).bfloat16()
    for p, r in ((low_policy, reference), (policy, low_reference), (low_policy, low_reference)):
        delta = excess_loss(
            policy_head0_cross_entropy(p, tokens), reference_cross_entropy(r, tokens), mask
        )
        assert delta.dtype == torch.float32
        assert (delta - exact).abs().max() < 0.05  # each side's bf16 logits: see above
    bf16_ce = reference_cross_entropy(reference, tokens).bfloat16()
    with pytest.raises(TypeError, match=re.escape("reference cross-entropy is torch.bfloat16")):
        excess_loss(policy_head0_cross_entropy(policy, tokens), bf16_ce, mask)


def test_rho1_follows_a_bf16_policy_with_a_bf16_reference(reference, make_model, batch):
    """`frozen.dtype: auto` with the trainer's bf16 autocast (as on GPUs): the reference is
    cast to bf16 at the first step, and the selection is still exactly ⌈κ·N⌉ targets."""
    policy = make_model(dtype=torch.float32)
    weighting = Rho1(reference, "selected")
    ctx = WeighContext(policy, 0, 3, torch.device("cpu"), lambda t: t, torch.bfloat16)
    weights = weighting.weigh_step([batch], ctx)[0]
    assert weighting.placement is not None and weighting.placement.dtype == torch.bfloat16
    assert next(reference.parameters()).dtype == torch.bfloat16
    assert weights.values is not None and weights.values.dtype == torch.float32
    assert int(weights.values.sum()) == selected_count(0.6, int(batch.loss_mask.sum()))
