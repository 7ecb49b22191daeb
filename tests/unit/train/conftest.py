"""Tiny models and batches for the training tests (float64 where gradients are compared)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import write_weighted_storage
from weighted_mtp.models.adapter import MtpTransformer
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.train.batches import Batch

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


def random_batch(
    rows: int = 6, seqlen: int = 24, vocab: int = 50, seed: int = 0, full_row: bool = True
) -> Batch:
    """BOS + prompt + response + EOS, right-padded; one row fills the sequence when
    `full_row` (its EOS is the last position)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, vocab, (rows, seqlen), generator=g)
    tokens[:, 0] = 1
    loss_mask = torch.zeros(rows, seqlen, dtype=torch.bool)
    for b in range(rows):
        prompt = int(torch.randint(1, seqlen // 2, (), generator=g))
        end = (
            seqlen
            if full_row and b == 0
            else int(torch.randint(prompt + 2, seqlen + 1, (), generator=g))
        )
        loss_mask[b, prompt + 1 : end] = True
        tokens[b, end - 1] = 2
        tokens[b, end:] = 0
    is_correct = torch.rand(rows, generator=g) < 0.5
    is_correct[0], is_correct[-1] = True, False
    task_ids = [f"task-{b // 2}" for b in range(rows)]
    lengths = torch.tensor([int(row.nonzero().max()) + 1 for row in loss_mask])
    sample_ids = tuple(f"sample-{b}" for b in range(rows))
    return Batch(tokens, loss_mask, lengths, is_correct, tuple(task_ids), sample_ids)


def rows_of(batch: Batch, rows: slice) -> Batch:
    """Rows of a batch, trimmed to their longest sequence like a real micro-batch."""
    width = int(batch.lengths[rows].max())
    return Batch(
        batch.tokens[rows, :width],
        batch.loss_mask[rows, :width],
        batch.lengths[rows],
        batch.is_correct[rows],
        batch.task_ids[rows],
        batch.sample_ids[rows],
    )


@pytest.fixture
def micro_batch():
    """`micro_batch(batch, rows)`: those rows of `batch` as a micro-batch."""
    return rows_of


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads
    per test process contend badly (measured 20x slower under load). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_batch():
    return random_batch


@pytest.fixture
def batch() -> Batch:
    return random_batch()


@pytest.fixture
def tiny_llama_config():
    return llama_config


def llama_config(vocab: int = 50, **overrides):
    """A transformers LlamaConfig a few thousand parameters large."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def weighted_storage(tmp_path_factory, sp_model_path):
    """`train_storage`'s content plus a random micro-ref sharing micro-mtp's tokenizer
    (`tests.helpers.write_weighted_storage`). Tests must not modify it."""
    return write_weighted_storage(tmp_path_factory.mktemp("weighted"), sp_model_path)
