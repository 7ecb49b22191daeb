"""The freshness store: an asset is current while neither its files nor its inputs changed;
known hashes are reused only for the same file; input hashes save rebuilds."""

import json
import os
import subprocess

from weighted_mtp.storage import freshness
from weighted_mtp.storage.layout import Layout


def _same_size_and_mtime_rewrite(path, data: bytes) -> None:
    """Replace `path` through a new file and a rename, keeping its size and mtime."""
    before = path.stat()
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    fresh.replace(path)


def _count_reads(monkeypatch) -> list:
    reads = []
    real = freshness.sha256_file
    monkeypatch.setattr(freshness, "sha256_file", lambda p, **k: reads.append(p) or real(p, **k))
    return reads


def test_a_record_holds_until_a_file_changes_and_survives_a_copy(layout):
    small = layout.small("mbpp")
    small.split("train").write_bytes(b"abc\n")
    freshness.record_verified(layout, "mbpp_small")
    assert freshness.is_current(layout, "mbpp_small")
    _same_size_and_mtime_rewrite(small.split("train"), b"abc\n")  # a copy keeping times
    assert freshness.is_current(layout, "mbpp_small")
    small.split("train").write_bytes(b"abcd\n")
    assert not freshness.is_current(layout, "mbpp_small")
    freshness.record_verified(layout, "mbpp_small")
    (small.root / "extra.jsonl").write_text("{}\n")
    assert not freshness.is_current(layout, "mbpp_small")
    freshness.clear(layout, "mbpp_small")
    (small.root / "extra.jsonl").unlink()
    assert not freshness.is_current(layout, "mbpp_small")


def test_records_are_keyed_by_asset_name_and_hold_output_hashes(layout):
    small = layout.small("mbpp")
    small.split("train").write_bytes(b"abc\n")
    freshness.record_verified(layout, "mbpp_small")
    data = json.loads(layout.freshness_store.read_text())
    record = data["assets"]["mbpp_small"]
    rel = layout.relative(small.split("train"))
    digest = "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"  # sha256 "abc\n"
    assert record["files"][rel][-1] == digest and record["verified_at"]
    assert data["files"][rel][-1] == digest  # the manifest's source of hashes


def test_a_known_hash_is_reused_only_for_the_same_file(layout, monkeypatch):
    """Size and mtime kept through a rewrite-and-rename: the new inode forces a re-hash."""
    path = layout.small("mbpp").split("train")
    path.write_bytes(b"abc\n")
    known = freshness.Store(layout)
    known.sha256(path)
    known.save()
    reads = _count_reads(monkeypatch)
    first = freshness.Store(layout).sha256(path)
    assert reads == []
    _same_size_and_mtime_rewrite(path, b"abd\n")
    second = freshness.Store(layout).sha256(path)
    assert reads == [path] and second != first
    assert freshness.Store(layout, trust_known=False).sha256(path) == second  # verify re-reads
    assert reads == [path, path]


def test_a_changed_or_removed_input_makes_the_asset_stale(layout):
    small, source = layout.small("mbpp"), layout.dataset("mbpp").split("train")
    small.split("train").write_bytes(b"sample\n")
    source.write_bytes(b"processed\n")
    freshness.record_verified(layout, "mbpp_small", built_now=True)
    assert freshness.is_current(layout, "mbpp_small")
    source.write_bytes(b"processed again\n")
    assert not freshness.is_current(layout, "mbpp_small")
    freshness.record_verified(layout, "mbpp_small", built_now=True)
    source.unlink()
    assert not freshness.is_current(layout, "mbpp_small")


def test_verification_keeps_the_inputs_recorded_at_build_time(layout):
    """Verifying again does not bless outputs as made from inputs that changed since."""
    raw = layout.dataset("mbpp").raw_split("train")
    raw.write_bytes(b'{"a": 1}\n')
    store = freshness.Store(layout)
    store.record_built("mbpp")
    store.save()
    raw.write_bytes(b'{"a": 2}\n')
    freshness.record_verified(layout, "mbpp")
    assert not freshness.is_current(layout, "mbpp")
    assert not freshness.Store(layout).inputs_unchanged("mbpp")


def test_an_input_rewritten_with_the_same_bytes_is_unchanged_by_hash(layout, monkeypatch):
    raw = layout.dataset("mbpp").raw_split("train")
    other = layout.dataset("mbpp").raw_split("test")
    raw.write_bytes(b'{"a": 1}\n')
    other.write_bytes(b'{"b": 1}\n')
    freshness.record_verified(layout, "mbpp", built_now=True)
    reads = _count_reads(monkeypatch)
    raw.write_bytes(b'{"a": 1}\n')  # new mtime, same bytes
    os.utime(raw, ns=(1, 1))
    store = freshness.Store(layout)
    assert not store.is_current("mbpp")
    assert store.inputs_unchanged("mbpp")
    assert reads == [raw]  # only the input whose fingerprint moved is read
    store.save()
    assert freshness.is_current(layout, "mbpp")  # the record took the new fingerprint


def test_a_cp_a_copy_of_the_storage_stays_current(layout, tmp_path):
    small = layout.small("mbpp")
    small.split("train").write_bytes(b"abc\n")
    layout.dataset("mbpp").split("train").write_bytes(b"processed\n")
    freshness.record_verified(layout, "mbpp_small", built_now=True)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(layout.root), str(copy)], check=True)
    copied = Layout(copy)
    assert freshness.is_current(copied, "mbpp_small")
    assert not freshness.is_current(copied, "humaneval_small")


def test_stores_opened_by_nested_steps_merge_on_save(layout):
    layout.small("mbpp").split("train").write_bytes(b"m\n")
    layout.small("humaneval").split("train").write_bytes(b"h\n")
    outer = freshness.Store(layout)
    freshness.record_verified(layout, "mbpp_small")  # e.g. a verification inside the checklist
    outer.record_verified("humaneval_small")
    outer.save()
    assert freshness.is_current(layout, "mbpp_small")
    assert freshness.is_current(layout, "humaneval_small")


def test_a_storage_from_before_the_store_keeps_its_known_hashes(layout, monkeypatch):
    path = layout.small("mbpp").split("train")
    path.write_bytes(b"abc\n")
    known = [*freshness.fingerprint(path.stat()), "ab" * 32]
    layout.legacy_hash_cache.parent.mkdir(parents=True, exist_ok=True)
    layout.legacy_hash_cache.write_text(json.dumps({layout.relative(path): known}))
    reads = _count_reads(monkeypatch)
    assert freshness.Store(layout).sha256(path) == "ab" * 32
    assert reads == []


def test_download_caches_are_not_part_of_an_asset(layout, monkeypatch):
    paths = layout.dataset("mbpp")
    paths.split("train").write_bytes(b"processed\n")
    paths.cache.mkdir(parents=True, exist_ok=True)
    parquet = paths.cache / "upstream.parquet"
    parquet.write_bytes(b"large upstream download")
    reads = _count_reads(monkeypatch)
    freshness.record_verified(layout, "mbpp")
    assert parquet not in reads
    parquet.write_bytes(b"another upstream download")
    assert freshness.is_current(layout, "mbpp")


def test_a_storage_from_before_the_store_keeps_its_verification_stamps(layout):
    """Old stamps (per asset folder, fingerprints only) become records: no re-verification
    after an upgrade, and a small set's old inputs still count."""
    small, split = layout.small("mbpp"), layout.dataset("mbpp").split("train")
    small.split("train").write_bytes(b"abc\n")
    split.write_bytes(b"processed\n")
    stamp = {
        "verified_at": "2026-01-01T00:00:00Z",
        "files": {
            layout.relative(small.split("train")): freshness.fingerprint(
                small.split("train").stat()
            )
        },
        "inputs": {layout.relative(split): freshness.fingerprint(split.stat())},
    }
    layout.legacy_stamps_dir.mkdir(parents=True)
    (layout.legacy_stamps_dir / "datasets_local_small__mbpp_small.json").write_text(
        json.dumps(stamp)
    )
    assert freshness.is_current(layout, "mbpp_small")
    split.write_bytes(b"processed again\n")
    assert not freshness.is_current(layout, "mbpp_small")
    freshness.record_verified(layout, "mbpp_small", built_now=True)  # the store takes over
    assert not layout.legacy_stamps_dir.exists()
    assert freshness.is_current(layout, "mbpp_small")
