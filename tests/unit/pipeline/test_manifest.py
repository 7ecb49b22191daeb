import json
import os
import subprocess

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline import manifest as mf
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import TEMP_MARKER
from weighted_mtp.storage.freshness import Store
from weighted_mtp.storage.hashing import sha256_file, write_sha256sums


def _populate(layout):
    model = layout.model("micro-mtp")
    model.weights.write_bytes(b"weights" * 100)
    model.metadata.write_text("{}")
    small = layout.small("mbpp").split("train")
    small.write_text('{"a": 1}\n')
    (model.cache / "partial").parent.mkdir(parents=True, exist_ok=True)
    (model.cache / "partial").write_bytes(b"download in progress")
    (model.safetensors_dir / f".model.safetensors{TEMP_MARKER}x").write_bytes(b"half")
    return model, small


def test_manifest_lists_assets_but_not_caches_or_leftovers(layout):
    model, small = _populate(layout)
    assert mf.refresh_manifest(layout)
    data = mf.load_manifest(layout)
    paths = [entry["path"] for entry in data["files"]]
    assert data["storage_version"] == "2.0.0"
    assert layout.relative(model.weights) in paths
    assert layout.relative(small) in paths
    assert not any(".cache" in p or TEMP_MARKER in p for p in paths)
    assert [layout.relative(p) for p in mf.iter_leftovers(layout)] == [
        f"models_v2/micro-mtp/safetensors/.model.safetensors{TEMP_MARKER}x"
    ]


def test_root_sha256sums_passes_coreutils_check(layout):
    _populate(layout)
    mf.refresh_manifest(layout)
    out = subprocess.run(
        ["sha256sum", "-c", "--quiet", "SHA256SUMS"],
        cwd=layout.root,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_unchanged_tree_keeps_the_manifest_byte_for_byte(layout):
    _populate(layout)
    mf.refresh_manifest(layout)
    before = layout.manifest.read_bytes()
    assert not mf.refresh_manifest(layout)
    assert layout.manifest.read_bytes() == before


def test_compare_names_changed_missing_and_unexpected_files(layout):
    model, small = _populate(layout)
    mf.refresh_manifest(layout)
    # same size, same mtime: only re-reading the bytes can notice
    stat = model.weights.stat()
    data = bytearray(model.weights.read_bytes())
    data[10] ^= 0xFF
    model.weights.write_bytes(bytes(data))
    os.utime(model.weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    small.unlink()
    extra = layout.dataset("mbpp").raw_split("train")
    extra.write_text("{}\n")
    diff = mf.compare_with_manifest(
        layout, mf.load_manifest(layout), Store(layout, trust_known=False)
    )
    assert diff.changed == [layout.relative(model.weights)]
    assert diff.missing == [layout.relative(small)]
    assert diff.unexpected == [layout.relative(extra)]
    assert not diff.ok
    assert layout.relative(model.weights) in diff.summary()


def test_intact_tree_matches(layout):
    _populate(layout)
    mf.refresh_manifest(layout)
    diff = mf.compare_with_manifest(
        layout, mf.load_manifest(layout), Store(layout, trust_known=False)
    )
    assert diff.ok, diff.summary()


def test_known_hashes_are_reused_only_while_size_and_mtime_match(layout, monkeypatch):
    model, _ = _populate(layout)
    mf.refresh_manifest(layout)
    calls = []
    real = freshness.sha256_file
    monkeypatch.setattr(freshness, "sha256_file", lambda p, **kw: calls.append(p) or real(p, **kw))
    mf.refresh_manifest(layout)
    assert calls == []
    model.weights.write_bytes(b"new weights")
    assert mf.refresh_manifest(layout)
    assert calls == [model.weights]


def test_malformed_manifest_is_a_one_line_error(layout):
    layout.manifest.write_text(json.dumps({"storage_version": "2.0.0", "files": []}))
    with pytest.raises(WmtpError, match="created_at"):
        mf.load_manifest(layout)


def test_hashes_recorded_by_a_model_download_are_reused(layout, monkeypatch):
    paths = layout.model("meta-llama-mtp")
    checkpoint = paths.raw_checkpoint_dir / "consolidated.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"checkpoint bytes")
    stat = checkpoint.stat()
    recorded = "ab" * 32  # what the download hashed while copying
    paths.source.write_text(
        json.dumps(
            {
                "files": {
                    "raw/7B_1T_4/consolidated.pth": {
                        "size": stat.st_size,
                        "mtime_ns": stat.st_mtime_ns,
                        "sha256": recorded,
                    }
                }
            }
        )
    )
    assert Store(layout, trust_known=True).sha256(checkpoint) == recorded
    real = Store(layout, trust_known=False).sha256(checkpoint)
    assert real != recorded  # verification never trusts it


def test_sha256sums_entries_outside_the_root_never_match(layout):
    inside = layout.dataset("mbpp").raw_split("train")
    inside.write_text("{}\n")
    sums = layout.dataset("mbpp").raw_checksums
    outside = layout.root.parent / "outside.txt"
    outside.write_text("x")
    write_sha256sums(
        sums,
        {
            "../raw/train.jsonl": sha256_file(inside),
            "../../../../outside.txt": sha256_file(outside),
        },
    )
    count, bad = mf.sha256sums_mismatches(layout, sums, Store(layout, trust_known=False))
    assert count == 2
    assert bad == ["../../../../outside.txt"]
