from pathlib import Path

import pytest

from weighted_mtp.catalog import load_catalog
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import Layout


def test_packaged_catalog_names_the_upstream_sources():
    catalog = load_catalog()
    meta = catalog.model("meta-llama-mtp")
    assert meta.repo == "facebook/multi-token-prediction" and meta.revision
    reference = catalog.model("ref-sheared-llama-2.7b")
    assert reference.repo == "princeton-nlp/Sheared-LLaMA-2.7B"
    assert reference.revision == "bb17fdffbcb0d33c2fee6d3811c850b3063d05ac"
    assert reference.expected_sha256("pytorch_model-00002-of-00002.bin") == (
        "c9fde8a274acfc664a1e726dfd001ce43d86909629f666fd14544fe4d36f4b6d"
    )
    assert reference.expected_sha256("config.json") is None
    assert catalog.dataset("codecontests").repo == "deepmind/code_contests"
    assert catalog.dataset("humaneval").repo_type == "dataset"


def test_catalog_destinations_agree_with_the_layout(tmp_path: Path):
    catalog, layout = load_catalog(), Layout(tmp_path)
    meta = layout.model("meta-llama-mtp")
    dest = catalog.model("meta-llama-mtp").destination("7B_1T_4/consolidated.pth")
    assert meta.file(dest) == meta.raw_checkpoint_dir / "consolidated.pth"
    assert meta.file(catalog.model("meta-llama-mtp").destination("tokenizer.model")) == (
        meta.tokenizer_model
    )
    ref = layout.model("ref-sheared-llama-2.7b")
    ref_asset = catalog.model("ref-sheared-llama-2.7b")
    for name in ("pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "config.json"):
        assert ref.file(ref_asset.destination(name)) == ref.raw_checkpoint_dir / name
    assert ref.file(ref_asset.destination("tokenizer.model")) == ref.tokenizer_model
    assert ref.file(ref_asset.destination("tokenizer.json")) == ref.tokenizer_dir / "tokenizer.json"
    assert ref_asset.destination("README.md") is None


def test_user_catalog_overrides_and_is_validated(tmp_path: Path, monkeypatch):
    good = tmp_path / "catalog.yaml"
    good.write_text(
        "models:\n  meta-llama-mtp:\n    repo: me/fork\n    revision: abc123\n"
        "    files: [{path: a.pth, into: raw}]\ndatasets: {}\n"
    )
    monkeypatch.setenv("WMTP_CATALOG", str(good))
    assert load_catalog().model("meta-llama-mtp").revision == "abc123"
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  meta-llama-mtp:\n    repo: no-slash\ndatasets: {}\n")
    with pytest.raises(WmtpError, match="models/meta-llama-mtp/repo"):
        load_catalog(bad)
    bad.write_text(
        "models:\n  meta-llama-mtp:\n    repo: me/fork\n"
        "    files: [{path: a.pth, into: raw/../../..}]\ndatasets: {}\n"
    )
    with pytest.raises(WmtpError, match=r"models/meta-llama-mtp/files/0/into: .* leaves"):
        load_catalog(bad)
    bad.write_text("models: [\n")
    with pytest.raises(WmtpError, match="not valid YAML"):
        load_catalog(bad)
    with pytest.raises(WmtpError, match="micro-mtp is built from meta-llama-mtp, not downloaded"):
        load_catalog(good).model("micro-mtp")


def test_a_sha256_must_be_hex_and_name_one_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  meta-llama-mtp:\n    repo: me/fork\n"
        f"    files: [{{path: '*.pth', into: raw, sha256: {'a' * 64}}}]\ndatasets: {{}}\n"
    )
    with pytest.raises(WmtpError, match=r"files/0/sha256: a glob \('\*.pth'\)"):
        load_catalog(bad)
    bad.write_text(
        "models:\n  meta-llama-mtp:\n    repo: me/fork\n"
        "    files: [{path: a.pth, into: raw, sha256: ABC}]\ndatasets: {}\n"
    )
    with pytest.raises(WmtpError, match=r"files/0/sha256"):
        load_catalog(bad)


def test_an_earlier_catalog_with_formats_or_micro_models_is_refused_with_a_hint(tmp_path: Path):
    old = tmp_path / "old.yaml"
    old.write_text(
        "models:\n  meta-llama-mtp:\n    repo: me/fork\n    format: meta-mtp\n"
        "    files: [{path: a.pth, into: raw}]\ndatasets: {}\n"
    )
    with pytest.raises(WmtpError, match=r"models/meta-llama-mtp: format no longer belong"):
        load_catalog(old)
    old.write_text("models:\n  micro-mtp:\n    repo: me/fork\ndatasets: {}\n")
    with pytest.raises(
        WmtpError, match=r"models/micro-mtp: a built model has no .*assets/__init__\.py"
    ):
        load_catalog(old)
