"""The freshness store: an asset is current while neither its files nor its inputs changed."""

import json
import os

from weighted_mtp.storage import stamps


def _same_size_and_mtime_rewrite(path, data: bytes) -> None:
    """Replace `path` through a new file and a rename, keeping its size and mtime."""
    before = path.stat()
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    fresh.replace(path)


def test_a_stamp_holds_until_a_file_changes_and_survives_a_copy(layout, tmp_path):
    small = layout.small("mbpp")
    small.split("train").write_bytes(b"abc\n")
    stamps.record_verified(layout, small.root)
    assert stamps.is_current(layout, small.root)
    _same_size_and_mtime_rewrite(small.split("train"), b"abc\n")  # a copy keeping times
    assert stamps.is_current(layout, small.root)
    small.split("train").write_bytes(b"abcd\n")
    assert not stamps.is_current(layout, small.root)
    stamps.record_verified(layout, small.root)
    (small.root / "extra.jsonl").write_text("{}\n")
    assert not stamps.is_current(layout, small.root)


def test_a_known_hash_is_reused_only_for_the_same_file(layout, monkeypatch):
    """Size and mtime kept through a rewrite-and-rename: the new inode forces a re-hash."""
    from weighted_mtp.pipeline import manifest

    path = layout.small("mbpp").split("train")
    path.write_bytes(b"abc\n")
    known = manifest.Hasher(layout, trust_known=True)
    known.sha256(path)
    known.save()
    reads = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p, **k: reads.append(p) or real(p, **k))
    hasher = manifest.Hasher(layout, trust_known=True)
    first = hasher.sha256(path)
    assert reads == []
    _same_size_and_mtime_rewrite(path, b"abd\n")
    second = manifest.Hasher(layout, trust_known=True).sha256(path)
    assert reads == [path] and second != first


def test_a_changed_or_removed_input_makes_the_asset_stale(layout):
    small, source = layout.small("mbpp"), layout.dataset("mbpp").split("train")
    small.split("train").write_bytes(b"sample\n")
    source.write_bytes(b"processed\n")
    stamps.record_verified(layout, small.root, inputs=[source])
    assert stamps.is_current(layout, small.root)
    source.write_bytes(b"processed again\n")
    assert not stamps.is_current(layout, small.root)
    stamps.record_verified(layout, small.root, inputs=[source])
    source.unlink()
    assert not stamps.is_current(layout, small.root)


def test_stamps_without_inodes_still_count(layout):
    """Stamps written before inodes were recorded compare size and mtime."""
    small = layout.small("mbpp")
    small.split("train").write_bytes(b"abc\n")
    stamps.record_verified(layout, small.root)
    path = layout.verification_stamp(small.root)
    stamp = json.loads(path.read_text())
    stamp["files"] = {rel: fp[:2] for rel, fp in stamp["files"].items()}
    del stamp["inputs"]
    path.write_text(json.dumps(stamp))
    assert stamps.is_current(layout, small.root)
    small.split("train").write_bytes(b"abcd\n")
    assert not stamps.is_current(layout, small.root)
