"""Symlinks and special files in asset folders are named, never silently left out of
MANIFEST.json and SHA256SUMS."""

import os
import shutil

import pytest

from weighted_mtp.catalog import load_catalog
from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline import build as b
from weighted_mtp.pipeline.manifest import (
    compare_with_manifest,
    load_manifest,
    refresh_manifest,
)
from weighted_mtp.storage.freshness import Store


@pytest.fixture
def recorded(layout):
    """A storage with two asset files recorded in its manifest."""
    processed = layout.dataset("mbpp").processed
    (processed / "train.jsonl").write_text('{"a": 1}\n')
    (processed / "test.jsonl").write_text('{"b": 2}\n')
    refresh_manifest(layout)
    return layout


def _symlink_to_identical_copy(layout, tmp_path):
    target = layout.dataset("mbpp").processed / "train.jsonl"
    outside = tmp_path / "outside.jsonl"
    shutil.copy2(target, outside)
    target.unlink()
    target.symlink_to(outside)
    return target


def _fifo(layout, _tmp_path):
    path = layout.dataset("mbpp").stats / "notes.txt"
    os.mkfifo(path)
    return path


def _symlinked_folder(layout, tmp_path):
    path = layout.dataset("mbpp").root / "extra"
    (tmp_path / "elsewhere").mkdir()
    path.symlink_to(tmp_path / "elsewhere")
    return path


def _dangling(layout, tmp_path):
    path = layout.model("micro-mtp").configs / "params.json"
    path.symlink_to(tmp_path / "gone.json")
    return path


@pytest.mark.parametrize("make", [_symlink_to_identical_copy, _fifo, _symlinked_folder, _dangling])
def test_verify_names_them_as_not_part_of_the_storage(recorded, tmp_path, make):
    path = make(recorded, tmp_path)
    rel = recorded.relative(path)
    diff = compare_with_manifest(
        recorded, load_manifest(recorded), Store(recorded, trust_known=False)
    )
    assert not diff.ok and diff.not_regular == [rel]
    assert rel in diff.files() and "not regular files" in diff.summary()


@pytest.mark.parametrize("make", [_symlink_to_identical_copy, _fifo, _dangling])
def test_the_manifest_refresh_refuses_them_instead_of_dropping_them(recorded, tmp_path, make):
    path = make(recorded, tmp_path)
    before = recorded.manifest.read_bytes(), recorded.checksums.read_bytes()
    with pytest.raises(WmtpError, match="symlinks or special files") as exc:
        refresh_manifest(recorded)
    assert recorded.relative(path) in exc.value.line()
    assert (recorded.manifest.read_bytes(), recorded.checksums.read_bytes()) == before


def test_a_build_stops_with_one_line_naming_the_symlink(recorded, tmp_path):
    path = _symlink_to_identical_copy(recorded, tmp_path)
    with pytest.raises(WmtpError, match="replace each with a real copy") as exc:
        b.build(recorded, load_catalog(), only=["init", "report"])
    assert recorded.relative(path) in exc.value.line()
    paths = [entry["path"] for entry in load_manifest(recorded)["files"]]
    assert recorded.relative(path) in paths  # still recorded as the file it was


def test_caches_may_hold_links(recorded, tmp_path):
    cache = recorded.dataset("mbpp").cache
    cache.mkdir()
    (cache / "link").symlink_to(tmp_path)
    assert not refresh_manifest(recorded).written
