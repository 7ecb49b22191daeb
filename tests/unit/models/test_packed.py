"""oneDNN-packed linear layers: the products of `nn.Linear` (checked in float64), swapped
into a model in place only where they apply."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from weighted_mtp.models.adapter import MtpTransformer
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.models.packed import PackedLinear, pack_linear_layers, packing_works

pytestmark = pytest.mark.skipif(not packing_works(), reason="no oneDNN in this torch build")

PARAMS = MetaParams(
    dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=16, n_future_tokens=3
)


@pytest.mark.parametrize("shape", [(1, 48), (3, 48), (17, 48), (2, 5, 48)])
def test_packed_products_are_the_linear_layers_products(shape) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 200, bias=False)
    x = torch.randn(*shape)
    exact = x.double() @ linear.weight.double().T  # [..., 200]
    with torch.inference_mode():
        packed = PackedLinear(linear)(x)
    assert packed.shape == (*shape[:-1], 200) and packed.dtype == torch.float32
    torch.testing.assert_close(packed.double(), exact, rtol=1e-5, atol=1e-5)


def test_a_model_is_packed_in_place_and_computes_the_same_logits() -> None:
    torch.manual_seed(0)
    model = MtpTransformer(PARAMS).eval()
    dense = copy.deepcopy(model)
    # every block (trunk and heads): q, k, v, o and the 3 feed-forward; then the output
    assert pack_linear_layers(model) == 7 * PARAMS.n_layers + 1
    assert not any(type(m) is nn.Linear for m in model.modules())
    tokens = torch.randint(0, PARAMS.vocab_size, (2, 11))
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), dense(tokens), rtol=1e-5, atol=1e-5)
    assert pack_linear_layers(model) == 0  # nothing left to pack


def test_only_bias_free_float32_layers_are_packed() -> None:
    torch.manual_seed(0)
    model = MtpTransformer(PARAMS).double()
    assert pack_linear_layers(model) == 0
    assert type(model.output) is nn.Linear
    with_bias = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8, bias=False))
    assert pack_linear_layers(with_bias) == 1
    assert type(with_bias[0]) is nn.Linear and type(with_bias[1]) is PackedLinear


def test_the_probe_answers_the_same_every_time_and_leaves_torchs_random_state() -> None:
    """A random probe compared at allclose's default tolerance said "no oneDNN" for 7% of
    draws (the two products round differently near zero)."""
    state = torch.get_rng_state()
    answers = set()
    for _ in range(30):
        packing_works.cache_clear()
        answers.add(packing_works())
    assert answers == {True}
    assert torch.equal(torch.get_rng_state(), state)
