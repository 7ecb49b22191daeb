"""Tiny upstream-format fixtures (real tensor names, random values) for the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_META_PARAMS, TINY_REFERENCE_CONFIG


@pytest.fixture
def meta_mirror(tmp_path: Path, sp_model_path: Path) -> Path:
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    return write_meta_mirror(
        tmp_path / "meta-mirror", tokenizer_model=sp_model_path, params=dict(TINY_META_PARAMS)
    )


@pytest.fixture
def reference_mirror(tmp_path: Path, sp_model_path: Path) -> Path:
    from weighted_mtp.synthetic.model_mirrors import write_reference_mirror

    return write_reference_mirror(
        tmp_path / "ref-mirror", tokenizer_model=sp_model_path, config=dict(TINY_REFERENCE_CONFIG)
    )


@pytest.fixture
def catalog():
    from weighted_mtp.catalog import load_catalog

    return load_catalog()


@pytest.fixture
def meta_raw(layout, catalog, meta_mirror):
    """The tiny Meta model downloaded (from its mirror) into `layout`; returns its paths."""
    from weighted_mtp.models.upstream_download import download_model

    download_model(layout, catalog, "meta-llama-mtp", mirror=meta_mirror)
    return layout.model("meta-llama-mtp")


@pytest.fixture
def reference_raw(layout, catalog, reference_mirror):
    from weighted_mtp.models.upstream_download import download_model

    download_model(layout, catalog, "ref-sheared-llama-2.7b", mirror=reference_mirror)
    return layout.model("ref-sheared-llama-2.7b")
