"""The builders (meta device, LoRA, activation checkpointing, load) give one process exactly
the models the eager loaders give: same parameters, same logits, same fresh adapters and
value heads for a seed; bad weights are one clear error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import LOADING_POLICY, LOADING_REFERENCE
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.adapter import load_mtp_model, load_reference_model
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams
from weighted_mtp.synthetic.model_mirrors import write_model_folder
from weighted_mtp.train.builders import (
    build_frozen_critic,
    build_frozen_reference,
    build_policy,
    build_reference,
    build_value_model,
)
from weighted_mtp.train.config import LoraConfig, TrainConfig, with_overrides
from weighted_mtp.train.critic import ValueModel, critic_values
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.lora import apply_lora, hf_targets, inject_lora

ONE = Dist(0, 1, torch.device("cpu"))
POLICY = MetaParams.from_dict(LOADING_POLICY)
REFERENCE = HfLlamaConfig.from_dict(LOADING_REFERENCE)
LORA = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
TOKENS = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return write_model_folder(root / "mtp", POLICY), write_model_folder(root / "ref", REFERENCE)


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


def assert_same_parameters(built: torch.nn.Module, eager: torch.nn.Module) -> None:
    a, b = parameters(built), parameters(eager)
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("lora", [False, True])
def test_the_policy_equals_the_eager_load_with_its_adapters(folders, lora):
    config = TrainConfig(lora=LORA.model_copy(update={"enabled": lora}), seed=7, seq_len=64)
    policy = build_policy(folders[0], config, ONE)
    eager = apply_lora(load_mtp_model(folders[0].root), config.lora, config.seed)
    assert policy.core.training
    assert_same_parameters(policy.core, eager.core)
    if lora:  # fresh adapters, not zeros: B starts at 0 by design, A must be drawn
        assert any(n.endswith("lora_A.default.weight") for n in parameters(policy.core))
        assert all(p.abs().sum() > 0 for n, p in parameters(policy.core).items() if "lora_A" in n)
    with torch.no_grad():
        assert torch.equal(policy.core.eval()(TOKENS), eager.core.eval()(TOKENS))


def test_a_frozen_reference_equals_transformers_own_load(folders):
    """Rotary tables are non-persistent: recomputed after the meta build, or the logits
    would be garbage (the folder's rope_theta 500 is not transformers' default)."""
    config = TrainConfig(precision="fp32")
    reference, placement = build_frozen_reference(folders[1], config, ONE)
    eager = load_reference_model(folders[1].root)
    assert not placement.sharded and placement.dtype == torch.float32
    assert_same_parameters(reference, eager)
    for (name, built), (_, loaded) in zip(
        reference.named_buffers(), eager.named_buffers(), strict=True
    ):
        assert torch.equal(built, loaded), name
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        assert torch.equal(reference(TOKENS).logits, eager(TOKENS).logits)


@pytest.mark.parametrize("lora", [False, True])
def test_a_critic_to_train_has_the_eager_critics_numbers(folders, lora):
    config = TrainConfig(lora=LORA.model_copy(update={"enabled": lora}), seed=11)
    critic = build_value_model(folders[1], config, ONE).core
    # built eagerly: load, adapters from the seed, then the head from the seed
    backbone = load_reference_model(folders[1].root).model
    if lora:
        backbone = inject_lora(backbone, config.lora, config.seed)
    torch.manual_seed(config.seed)
    eager = ValueModel(backbone, config.critic.head_hidden).train()
    assert critic.training
    assert_same_parameters(critic, eager)
    torch.testing.assert_close(critic_values(critic, TOKENS), critic_values(eager, TOKENS))


def test_a_reference_to_tune_has_the_eager_numbers(folders):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = TrainConfig(lora=LORA, seed=5)
    tuned = build_reference(folders[1], config, ONE)
    torch.manual_seed(config.seed)
    peft_config = PeftLoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, target_modules=list(hf_targets(config.lora))
    )
    eager = get_peft_model(load_reference_model(folders[1].root), peft_config)
    assert tuned.peft is not None and tuned.core.training
    assert_same_parameters(tuned.peft, eager)


def test_a_frozen_critic_reads_every_tensor_from_its_run(folders, tmp_path):
    config = TrainConfig(lora=LORA, seed=2, precision="fp32")
    trained = build_value_model(folders[1], config, ONE).core
    with torch.no_grad():  # as if trained: adapters and head away from their init
        for name, p in trained.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                p.normal_(std=0.3)
    weights = tmp_path / "critic.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, weights)
    critic, _ = build_frozen_critic(folders[1].hf_config, weights, config, ONE)
    assert_same_parameters(critic, trained)
    torch.testing.assert_close(critic_values(critic, TOKENS), critic_values(trained, TOKENS))
    narrow = with_overrides(config, {"critic.head_hidden": 16}, "test")
    with pytest.raises(WmtpError, match=r"tensor head\.proj\.weight has shape \[256, 32\]"):
        build_frozen_critic(folders[1].hf_config, weights, narrow, ONE)


def test_a_tensor_missing_from_the_weights_is_one_clear_error(folders, tmp_path):
    from weighted_mtp.models.sharded_load import Weights, materialize, meta_mtp_model

    state = load_mtp_model(folders[0].root).state_dict()
    del state["norm.weight"]
    partial = tmp_path / "model.safetensors"
    save_file(state, partial)
    with pytest.raises(WmtpError, match=r"tensor norm\.weight is missing") as error:
        materialize(meta_mtp_model(POLICY), ONE.device, Weights(partial), {})
    assert str(partial) in error.value.line()
