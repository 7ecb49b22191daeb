"""Dataset fixtures: upstream-format mirrors built once per session, prepared roots per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<dir>/{codecontests,mbpp,humaneval}/` laid out like the upstream repos. Read-only."""
    from weighted_mtp.assets.benchmarks.codecontests import write_codecontests_mirror
    from weighted_mtp.assets.benchmarks.humaneval import write_humaneval_mirror
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.storage.atomic import atomic_write

    root = tmp_path_factory.mktemp("mirrors")
    write_codecontests_mirror(root / "codecontests", atomic_write, n_problems=24, seed=0)
    write_mbpp_mirror(root / "mbpp", atomic_write, n_tasks=40)
    write_humaneval_mirror(root / "humaneval", atomic_write)
    return root


@pytest.fixture
def downloaded(layout, mirrors):
    """A storage root with all three datasets downloaded from the mirrors."""
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset

    catalog = load_catalog()
    for name in ("codecontests", "mbpp", "humaneval"):
        download_dataset(layout, catalog, name, mirror=mirrors / name)
    return layout


@pytest.fixture
def prepared(downloaded, sp_model_path):
    """Downloaded, prepared (max length 2048, seed 42) and with small sets."""
    from weighted_mtp.data.prepare import prepare_dataset
    from weighted_mtp.data.small import build_small

    for name in ("codecontests", "mbpp", "humaneval"):
        prepare_dataset(downloaded, name, tokenizer=sp_model_path)
        build_small(downloaded, name)
    return downloaded
