import os
from pathlib import Path

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.clean import execute_clean, plan_clean


def _populate(layout) -> dict[str, Path]:
    meta = layout.model("meta-llama-mtp")
    files = {
        "converted": meta.weights,
        "ongoing_7b": meta.raw_checkpoint_dir / "consolidated.pth",
        "hf_partial": meta.raw / ".cache" / "huggingface" / "download" / "x.incomplete",
        "ref_cache": layout.model("ref-sheared-llama-2.7b").cache / "blob",
        "partial": layout.dataset("codecontests").raw / "train.parquet.incomplete",
        "processed": layout.dataset("mbpp").split("train"),
        "small": layout.small("mbpp").split("train"),
        "legacy": layout.root / "models" / "old.bin",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data")
    return files


def test_plan_deletes_nothing(layout):
    files = _populate(layout)
    plan = plan_clean(layout)
    assert plan.remove
    assert all(p.exists() for p in files.values())


def test_clean_keeps_downloads_caches_and_the_7b_folder(layout):
    files = _populate(layout)
    execute_clean(layout, plan_clean(layout))
    for key in ("ongoing_7b", "hf_partial", "ref_cache", "partial", "legacy"):
        assert files[key].exists(), key
    for key in ("converted", "processed", "small"):
        assert not files[key].exists(), key
    assert not layout.small_dir.exists()
    assert not layout.dataset("mbpp").root.exists()


def test_legacy_and_keep(layout):
    files = _populate(layout)
    execute_clean(layout, plan_clean(layout, legacy=True, keep=[files["processed"]]))
    assert not files["legacy"].exists()
    assert files["processed"].exists()


def test_keep_outside_root_is_refused(layout, tmp_path: Path):
    with pytest.raises(WmtpError, match="outside the storage root"):
        plan_clean(layout, keep=[tmp_path / "elsewhere"])


def test_symlinks_out_of_the_root_are_never_followed(layout, tmp_path: Path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "file").write_text("keep me")
    os.symlink(outside, layout.dataset("mbpp").raw / "link")
    os.symlink(outside, layout.root / "datasets_local_small" / "mbpp_small" / "dirlink")
    execute_clean(layout, plan_clean(layout))
    assert (outside / "file").read_text() == "keep me"


def test_symlinked_top_folder_is_removed_as_a_link(layout, tmp_path: Path):
    outside = tmp_path / "real_small"
    outside.mkdir()
    (outside / "train_small.jsonl").write_text("{}\n")
    import shutil

    shutil.rmtree(layout.small_dir)
    os.symlink(outside, layout.small_dir)
    execute_clean(layout, plan_clean(layout))
    assert not layout.small_dir.is_symlink()
    assert (outside / "train_small.jsonl").exists()
