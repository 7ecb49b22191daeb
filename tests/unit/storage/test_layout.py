from pathlib import Path

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import DATASETS, Layout, safe_relative

SEED_LAYOUT = (
    [
        f"models_v2/{m}/{s}"
        for m in ("meta-llama-mtp", "ref-sheared-llama-2.7b", "micro-mtp", "micro-ref")
        for s in ("raw", "safetensors", "configs", "tokenizer")
    ]
    + [f"datasets_v2/{d}/{s}" for d in DATASETS for s in ("raw", "processed", "stats")]
    + [f"datasets_local_small/{d}_small" for d in DATASETS]
)


def test_directories_are_exactly_the_seed_layout(tmp_path: Path):
    layout = Layout(tmp_path)
    leaves = {layout.relative(d) for d in layout.directories()}
    assert set(SEED_LAYOUT) <= leaves
    # Everything else listed is a parent of a seed folder.
    for extra in leaves - set(SEED_LAYOUT):
        assert any(s.startswith(extra + "/") for s in SEED_LAYOUT), extra


def test_named_files(tmp_path: Path):
    layout = Layout(tmp_path)
    meta = layout.model("meta-llama-mtp")
    assert layout.relative(meta.sha256sums) == "models_v2/meta-llama-mtp/safetensors/SHA256SUMS"
    assert layout.relative(meta.raw_checkpoint_dir) == "models_v2/meta-llama-mtp/raw/7B_1T_4"
    assert layout.relative(meta.raw_meta_checkpoint) == (
        "models_v2/meta-llama-mtp/raw/7B_1T_4/consolidated.pth"
    )
    ref = layout.model("ref-sheared-llama-2.7b")
    assert layout.relative(ref.raw_hf_config) == (
        "models_v2/ref-sheared-llama-2.7b/raw/reference_model/config.json"
    )
    assert layout.relative(layout.dataset("mbpp").split("validation")) == (
        "datasets_v2/mbpp/processed/validation.jsonl"
    )
    assert layout.relative(layout.small("humaneval").split("test")) == (
        "datasets_local_small/humaneval_small/test_small.jsonl"
    )


def test_unknown_asset_names_are_user_errors(tmp_path: Path):
    layout = Layout(tmp_path)
    with pytest.raises(WmtpError, match="unknown model 'gpt2'"):
        layout.model("gpt2")
    with pytest.raises(WmtpError, match="unknown dataset"):
        layout.small("imagenet")


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "C:/x", ""])
def test_relative_paths_cannot_escape(bad: str):
    with pytest.raises(WmtpError, match="outside"):
        safe_relative(bad)


def test_root_is_normalised(tmp_path: Path):
    assert Layout(tmp_path / "a" / ".." / "b").root == tmp_path / "b"
