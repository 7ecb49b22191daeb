"""Tiny MTP models for the training tests (float64 where gradients are compared)."""

from __future__ import annotations

import pytest
import torch

from weighted_mtp.models.adapter import MtpTransformer
from weighted_mtp.models.architecture import MetaParams

TINY = MetaParams(
    dim=32,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=61,
    multiple_of=16,
    n_future_tokens=3,
    max_seq_len=64,
)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, params: MetaParams = TINY):
    """Default init plus random norm weights, so every parameter matters."""
    torch.manual_seed(seed)
    model = MtpTransformer(params).to(dtype)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("norm.weight"):
                tensor.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def make_model():
    """`make_model(seed=0, dtype=torch.float64, params=TINY)`: a tiny MtpTransformer."""
    return tiny_model


@pytest.fixture
def tokens_and_mask():
    """Three right-padded rows: BOS + prompt, then targets, then padding."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, TINY.vocab_size, (3, 12), generator=gen)  # [B, S]
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 4:12] = True
    mask[1, 3:9] = True
    mask[2, 6:10] = True
    return tokens, mask


@pytest.fixture(scope="session")
def train_storage(tmp_path_factory, sp_model_path):
    """A storage root with a tiny verified micro-mtp (dim 32, 3 blocks, 2 heads, vocab 1024)
    and the synthetic CodeContests set prepared with small sets. Tests must not modify it
    (runs go to their own --out folders)."""
    from weighted_mtp.synthetic.training import write_training_storage

    return write_training_storage(tmp_path_factory.mktemp("train"), tokenizer_model=sp_model_path)
