"""`wmtp backup`: real copies, caches left out, resumable, verified against MANIFEST.json,
recorded in both roots; the tag of an approval. The demo's backup (and `verify` of it) is
covered end to end in test_end_to_end.py."""

import os
import shutil
from collections import namedtuple

import pytest

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.pipeline.approve import check_tag_is_free
from weighted_mtp.pipeline.backup import backup
from weighted_mtp.pipeline.backup_record import backup_status, load_backups
from weighted_mtp.pipeline.manifest import load_manifest, manifest_sha256, refresh_manifest
from weighted_mtp.pipeline.records import tag_status
from weighted_mtp.storage.atomic import write_json
from weighted_mtp.storage.layout import Layout


@pytest.fixture
def storage(layout):
    """A storage with a few asset files, a cache, a partial download and a manifest."""
    layout.small("mbpp").split("train").write_text('{"x": 1}\n')
    layout.dataset("mbpp").raw_split("mbpp").write_bytes(os.urandom(300_000))
    cache = layout.dataset("mbpp").cache
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "full.parquet").write_bytes(b"cached upstream")
    (layout.model("meta-llama-mtp").raw / "consolidated.pth.part").write_bytes(b"partial")
    refresh_manifest(layout)
    return layout


def test_a_backup_is_real_copies_without_caches_and_is_recorded_in_both_roots(storage, tmp_path):
    dest = tmp_path / "backup"
    result = backup(storage, dest)
    copy = Layout(dest)
    for entry in load_manifest(storage)["files"]:
        source, target = storage.root / entry["path"], dest / entry["path"]
        assert target.read_bytes() == source.read_bytes()
        assert not os.path.samefile(source, target) and target.stat().st_nlink == 1
    assert not list(dest.rglob(".cache")) and not list(dest.rglob("*.part"))
    assert copy.manifest.read_bytes() == storage.manifest.read_bytes()
    assert all(p.is_dir() for p in (dest / storage.relative(d) for d in storage.directories()))
    assert result.copied == result.files
    record = load_backups(storage)[-1]
    assert record["dest"] == str(dest) and record["manifest_sha256"] == manifest_sha256(storage)
    assert load_backups(copy) == load_backups(storage)
    assert backup_status(storage)[0] and str(dest) in backup_status(storage)[1]
    ok, detail, _ = backup_status(copy)
    assert ok and detail == f"this is the verified backup of {storage.root}"


def test_a_rerun_resumes_and_reads_every_copy_back(storage, tmp_path):
    dest = tmp_path / "backup"
    backup(storage, dest)
    small = storage.small("mbpp").split("train")
    (dest / storage.relative(small)).unlink()  # an interrupted first run
    again = backup(storage, dest)
    assert again.copied < again.files
    assert (dest / storage.relative(small)).read_bytes() == small.read_bytes()

    raw = dest / storage.relative(storage.dataset("mbpp").raw_split("mbpp"))
    stat = raw.stat()
    data = bytearray(raw.read_bytes())
    data[1000] ^= 1
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # looks complete, is not
    with pytest.raises(WmtpError, match=r"backup's copy of datasets_v2/mbpp/raw/mbpp.jsonl"):
        backup(storage, dest)


def test_a_storage_that_differs_from_its_manifest_is_not_backed_up(storage, tmp_path):
    storage.small("mbpp").split("train").write_text('{"x": 2}\n')
    with pytest.raises(WmtpError, match=r"train_small.jsonl differs from MANIFEST.json"):
        backup(storage, tmp_path / "backup")
    assert not storage.backups.exists()


def test_destinations_that_are_no_backup_are_refused(storage, tmp_path):
    with pytest.raises(WmtpError, match="inside the storage"):
        backup(storage, storage.root / "backup")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(WmtpError, match="holds files but no storage"):
        backup(storage, foreign)


def test_free_space_is_checked_before_copying(storage, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(0, 0, 1 << 20))
    with pytest.raises(WmtpError, match="not enough free disk for the backup"):
        backup(storage, tmp_path / "backup")
    assert not (tmp_path / "backup" / "datasets_v2").exists()


def test_a_later_change_makes_the_backup_stale(storage, tmp_path):
    ok, detail, _ = backup_status(storage)
    assert not ok and "no backup yet" in detail
    backup(storage, tmp_path / "backup")
    small = storage.small("mbpp").split("train")
    assert not backup_status(storage, [storage.relative(small)])[0]
    small.write_text('{"x": 3}\n')
    refresh_manifest(storage)
    ok, detail, _ = backup_status(storage)
    assert not ok and "earlier state" in detail and "wmtp backup DEST" in detail


def _approve_current(layout, tag):
    write_json(
        layout.approvals,
        {
            "approvals": [
                {"by": "R", "at": "t", "tag": tag, "manifest_sha256": manifest_sha256(layout)}
            ]
        },
    )


def test_the_tag_names_exactly_one_manifest(storage):
    assert not tag_status(storage)[0]
    _approve_current(storage, "v2.0.0")
    ok, detail, _ = tag_status(storage)
    assert ok and detail.startswith("tag v2.0.0 names MANIFEST.json sha256")
    approvals = [{"tag": "v2.0.0", "manifest_sha256": manifest_sha256(storage), "at": "t"}]
    check_tag_is_free(approvals, "v2.0.0", manifest_sha256(storage))  # the same state
    with pytest.raises(UsageError, match=r"tag v2\.0\.0 already names"):
        check_tag_is_free(approvals, "v2.0.0", "0" * 64)
    storage.small("mbpp").split("train").write_text('{"x": 4}\n')
    refresh_manifest(storage)
    ok, detail, _ = tag_status(storage)
    assert not ok and "names an earlier manifest" in detail
