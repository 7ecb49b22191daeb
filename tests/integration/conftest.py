"""Fixtures for the end-to-end tests (real processes)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def train_storage(tmp_path_factory, sp_model_path):
    """A storage root with a tiny verified micro-mtp and the small synthetic CodeContests
    set (see `weighted_mtp.synthetic.training`). Read-only: runs go to their own --out."""
    from weighted_mtp.synthetic.training import write_training_storage

    return write_training_storage(tmp_path_factory.mktemp("train"), tokenizer_model=sp_model_path)


@pytest.fixture(scope="session")
def weighted_storage(tmp_path_factory, sp_model_path):
    """`train_storage`'s content plus a random micro-ref sharing micro-mtp's tokenizer, for
    the weighted experiments. Read-only: runs go to their own --out."""
    from tests.helpers import write_weighted_storage

    return write_weighted_storage(tmp_path_factory.mktemp("weighted"), sp_model_path)
