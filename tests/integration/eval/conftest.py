"""Fixtures for the evaluation tests that train their own runs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def storage(tmp_path_factory, sp_model_path):
    """A training storage with HumanEval and MBPP prepared (each module's runs train on its
    own copy, once per test worker that needs it)."""
    from tests.helpers import add_eval_datasets
    from weighted_mtp.synthetic.training import write_training_storage

    base = tmp_path_factory.mktemp("trained")
    layout = write_training_storage(base, tokenizer_model=sp_model_path)
    return add_eval_datasets(layout, base, sp_model_path)
