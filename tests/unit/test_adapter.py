"""The MTP adapter: architecture against transformers' Llama, the loss, the micro models.

`pytest tests/unit/test_adapter.py -k micro` checks the micro models (the checklist's micro
group): the tests whose names contain `micro` load them and check shapes, the loss and the
tokenizer.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.adapter import (
    MtpTransformer,
    load_mtp_model,
    load_reference_model,
    mtp_loss,
)
from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes
from weighted_mtp.models.export_hf import (
    hf_llama_config,
    hf_tensor_sources,
    interleaved_to_half_split,
)
from weighted_mtp.storage.layout import META_MODEL, MICRO_MTP, MICRO_REF, REFERENCE_MODEL

TINY = {
    "dim": 64,
    "n_layers": 5,
    "n_heads": 4,
    "vocab_size": 97,
    "multiple_of": 32,
    "n_future_tokens": 3,
    "rope_theta": 500000.0,
    "norm_eps": 1e-6,
    "max_seq_len": 64,
}


def random_mtp(params: MetaParams, seed: int = 0) -> MtpTransformer:
    """Default init plus random norm weights, so a wrong norm wiring changes the output."""
    torch.manual_seed(seed)
    model = MtpTransformer(params)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("norm.weight"):
                tensor.uniform_(0.5, 1.5)
    return model.eval()


def hf_llama_for_head(model: MtpTransformer, head: int, *, permute: bool = True):
    """transformers' Llama made of the trunk plus head `head`'s block (the oracle)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    params = model.params
    config = hf_llama_config(params, n_layers=params.n_trunk_layers + 1, dtype="float32")
    oracle = LlamaForCausalLM(LlamaConfig(**config)).eval()
    state = model.state_dict()
    hf_state = {}
    for source in hf_tensor_sources(params, head):
        tensor = state[source.meta_name]
        if source.rotary_heads and permute:
            tensor = interleaved_to_half_split(tensor, source.rotary_heads)
        hf_state[source.hf_name] = tensor
    oracle.load_state_dict(hf_state, strict=True)
    return oracle


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_state_dict_has_metas_names_and_shapes():
    params = MetaParams(**TINY, n_kv_heads=2)
    model = MtpTransformer(params)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == meta_tensor_shapes(params)


def test_state_dict_matches_the_7b_architecture_on_the_meta_device():
    params = MetaParams(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, n_future_tokens=4)
    with torch.device("meta"):
        model = MtpTransformer(params)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == meta_tensor_shapes(params)
    assert actual["layers.28.feed_forward.w1.weight"] == (11008, 4096)
    assert "layers.29.attention.wq.weight" not in actual
    assert "extra_heads.2.attention.wq.weight" in actual


@pytest.mark.parametrize("n_kv_heads", [None, 2], ids=["mha", "gqa"])
def test_every_head_matches_transformers_llama(n_kv_heads):
    params = MetaParams(**TINY, n_kv_heads=n_kv_heads)
    model = random_mtp(params)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, params.vocab_size, (2, 11), generator=generator)
    with torch.no_grad():
        logits = model(tokens)
        for head in range(params.n_future_tokens):
            expected = hf_llama_for_head(model, head)(tokens).logits
            assert relative_error(logits[:, :, head], expected) < 1e-5, head


def test_oracle_detects_a_wrong_rotary_layout():
    params = MetaParams(**TINY)
    model = random_mtp(params)
    tokens = torch.arange(12)[None] % params.vocab_size
    with torch.no_grad():
        unpermuted = hf_llama_for_head(model, 0, permute=False)(tokens).logits
        assert relative_error(model(tokens)[:, :, 0], unpermuted) > 1e-3


def test_rope_theta_is_used():
    model = random_mtp(MetaParams(**TINY))
    other = random_mtp(MetaParams(**{**TINY, "rope_theta": 10000.0}))
    tokens = torch.arange(16)[None]
    with torch.no_grad():
        assert relative_error(model(tokens), other(tokens)) > 1e-4


def test_attention_is_causal():
    model = random_mtp(MetaParams(**TINY))
    tokens = torch.arange(10)[None]
    changed = tokens.clone()
    changed[0, 7] = 50
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_heads_share_the_trunk_and_differ():
    model = random_mtp(MetaParams(**TINY))
    tokens = torch.arange(8)[None]
    with torch.no_grad():
        all_heads = model(tokens)
        first = model(tokens, return_all_heads=False)
    assert all_heads.shape == (1, 8, 3, 97) and first.shape == (1, 8, 1, 97)
    assert torch.equal(all_heads[:, :, :1], first)
    assert not torch.allclose(all_heads[:, :, 0], all_heads[:, :, 1])


# The loss ----------------------------------------------------------------------------------


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


# batch 1, seq 3, heads 2, vocab 3
LOGITS = torch.tensor(
    [
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            [[0.0, 0.0, 3.0], [1.0, 1.0, 0.0]],
            [[5.0, 5.0, 5.0], [9.0, 9.0, 9.0]],
        ]
    ]
)
TOKENS = torch.tensor([[0, 1, 2]])


def test_micro_loss_hand_computed():
    # head 0: position 0 -> token 1, position 1 -> token 2; head 1: position 0 -> token 2.
    head0 = (_ce([2, 0, 0], 1) + _ce([0, 0, 3], 2)) / 2
    head1 = _ce([0, 1, 0], 2)
    loss, per_head = mtp_loss(LOGITS, TOKENS)
    assert per_head.tolist() == pytest.approx([head0, head1], rel=1e-6)
    assert loss.item() == pytest.approx((head0 + head1) / 2, rel=1e-6)


def test_micro_loss_weights_change_it_as_they_should():
    plain = mtp_loss(LOGITS, TOKENS)
    ones = mtp_loss(LOGITS, TOKENS, weights=torch.ones(1, 3))
    doubled = mtp_loss(LOGITS, TOKENS, weights=torch.full((1, 3), 2.0))
    assert torch.allclose(ones.per_head, plain.per_head)
    assert torch.allclose(doubled.per_head, 2 * plain.per_head)

    # Token weights: token 2 weighs 0, so head 0 keeps only its first term (divided by the 2
    # valid targets) and head 1 (whose only target is token 2) becomes 0.
    no_last = mtp_loss(LOGITS, TOKENS, weights=torch.tensor([[1.0, 1.0, 0.0]]))
    assert no_last.per_head.tolist() == pytest.approx([_ce([2, 0, 0], 1) / 2, 0.0], rel=1e-6)

    # Per-head weights are aligned with the logits: [batch, position, head].
    per_head_weights = torch.zeros(1, 3, 2)
    per_head_weights[0, 0, 1] = 3.0
    weighted = mtp_loss(LOGITS, TOKENS, weights=per_head_weights)
    assert weighted.per_head.tolist() == pytest.approx([0.0, 3 * _ce([0, 1, 0], 2)], rel=1e-6)


def test_micro_loss_mask_drops_targets_from_the_mean():
    masked = mtp_loss(LOGITS, TOKENS, loss_mask=torch.tensor([[1, 0, 1]]))
    # Token 1 is not a target: head 0 keeps position 1 -> token 2 only; head 1 unchanged.
    assert masked.per_head.tolist() == pytest.approx(
        [_ce([0, 0, 3], 2), _ce([0, 1, 0], 2)], rel=1e-6
    )
    only_first = mtp_loss(LOGITS, TOKENS, loss_mask=torch.tensor([[1, 1, 0]]))
    # Head 1 has no valid target left and is left out of the mean.
    assert only_first.loss.item() == pytest.approx(_ce([2, 0, 0], 1), rel=1e-6)


def test_micro_loss_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="weights"):
        mtp_loss(LOGITS, TOKENS, weights=torch.ones(1, 3, 5))
    with pytest.raises(ValueError, match="tokens"):
        mtp_loss(LOGITS, torch.tensor([[0, 1]]))


# The micro models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_storage(tmp_path_factory, sp_model_path):
    """A storage root with both bases' tokenizers and both micro models (random init)."""
    from weighted_mtp.models.micro import build_micro
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    layout = Layout(tmp_path_factory.mktemp("micro") / "storage")
    init_storage(layout)
    shutil.copyfile(sp_model_path, layout.model(META_MODEL).tokenizer_model)
    shutil.copyfile(sp_model_path, layout.model(REFERENCE_MODEL).tokenizer_model)
    build_micro(layout, MICRO_MTP, seed=3)
    build_micro(layout, MICRO_REF, seed=3)
    return layout


def test_micro_mtp_loads_with_the_agreed_size(micro_storage):
    paths = micro_storage.model(MICRO_MTP)
    assert paths.weights.stat().st_size < 50 * 2**20
    model = load_mtp_model(paths.root)
    p = model.params
    assert (p.dim, p.n_layers, p.n_heads, p.vocab_size, p.n_future_tokens) == (512, 4, 8, 8000, 4)
    assert p.n_trunk_layers == 0 and len(model.extra_heads) == 3
    tokens = torch.randint(0, 8000, (2, 16))
    with torch.no_grad():
        assert model(tokens).shape == (2, 16, 4, 8000)
        assert model(tokens, return_all_heads=False).shape == (2, 16, 1, 8000)


def test_micro_mtp_loads_in_float16_and_trains(micro_storage):
    model = load_mtp_model(micro_storage.model(MICRO_MTP).root, dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16
    model32 = load_mtp_model(micro_storage.model(MICRO_MTP).root).train()
    tokens = torch.randint(0, 8000, (1, 8))
    loss, per_head = mtp_loss(model32(tokens), tokens)
    loss.backward()
    assert per_head.shape == (4,) and math.isfinite(loss.item())
    assert model32.extra_heads[2].attention.wq.weight.grad.abs().sum() > 0


def test_micro_ref_loads_as_transformers_llama(micro_storage, capfd):
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    paths = micro_storage.model(MICRO_REF)
    assert paths.weights.stat().st_size < 50 * 2**20
    model = load_reference_model(paths.root)
    # transformers' own loading bar stays off (wmtp reports progress) and is restored after
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (512, 4)
    with torch.no_grad():
        assert model(torch.randint(0, 8000, (2, 16))).logits.shape == (2, 16, 8000)


def test_micro_loader_names_a_missing_tensor(micro_storage, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / MICRO_MTP
    shutil.copytree(micro_storage.model(MICRO_MTP).root, folder)
    weights = folder / "safetensors" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["extra_heads.1.ffn_norm.weight"]
    save_file(tensors, weights)
    with pytest.raises(WmtpError, match=r"missing tensor extra_heads\.1\.ffn_norm\.weight"):
        load_mtp_model(folder)


def test_micro_loader_rejects_configs_that_disagree_with_the_tensors(micro_storage, tmp_path):
    import json

    folder = tmp_path / MICRO_REF
    shutil.copytree(micro_storage.model(MICRO_REF).root, folder)
    config_path = folder / "configs" / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 2048
    config_path.write_text(json.dumps(config))
    with pytest.raises(WmtpError, match=r"mlp\.gate_proj\.weight has shape \[1536, 512\]"):
        load_reference_model(folder)


def test_micro_loader_rejects_a_tokenizer_larger_than_the_vocab(micro_storage, tmp_path):
    folder = tmp_path / MICRO_MTP
    shutil.copytree(micro_storage.model(MICRO_MTP).root, folder)
    shutil.copyfile(
        micro_storage.model(META_MODEL).tokenizer_model, folder / "tokenizer" / "tokenizer.model"
    )
    with pytest.raises(WmtpError, match="tokenizer has 8320 pieces but the model's vocab is 8000"):
        load_mtp_model(folder)


SAMPLES = [
    'def add(a, b):\n    """Return a + b."""\n    return a + b\n',
    "for (int i = 0; i < n; ++i) {\n\tsum += xs[i];  // trailing  spaces   \n}\n",
    "print('héllo wörld', \"한국어\", '🎉 emoji', 'QUIZ ^^ && Zebra')\n\n\n",
    "  leading and trailing  ",
]


def test_micro_tokenizer_is_lossless_and_id_compatible(micro_storage):
    from weighted_mtp.models.metadata import read_metadata
    from weighted_mtp.models.tokenizer import load_sentencepiece

    base = load_sentencepiece(micro_storage.model(META_MODEL).tokenizer_model)
    for name in (MICRO_MTP, MICRO_REF):
        paths = micro_storage.model(name)
        micro = load_sentencepiece(paths.tokenizer_model)
        metadata = read_metadata(paths.metadata)
        replaced = set(metadata.tokenizer_trimmed.replaced)
        moved = {micro.id_to_piece(i) for i in replaced}
        assert micro.get_piece_size() == 8000
        assert metadata.tokenizer_shared_with == META_MODEL
        for i in range(8000):
            if i not in replaced:
                assert micro.id_to_piece(i) == base.id_to_piece(i), i
                assert micro.get_score(i) == base.get_score(i)
        # The rarest merges make room for single characters, which the base has too.
        assert min(replaced) > 7500 and 7999 in replaced
        assert all(len(piece) == 1 and base.piece_to_id(piece) >= 8000 for piece in moved)
        for text in SAMPLES:
            ids = micro.encode(text)
            assert max(ids) < 8000
            assert micro.decode(ids) == text
            if not replaced & set(ids):
                assert base.decode(ids) == text
        # A moved character's id maps back to the base's id of that character.
        common = "def add(a, b): return a"
        ids = micro.encode(common)
        in_base = [base.piece_to_id(micro.id_to_piece(i)) if i in replaced else i for i in ids]
        assert base.decode(in_base) == common
