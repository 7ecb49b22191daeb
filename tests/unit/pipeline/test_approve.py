"""Approvals: refused on a storage that does not verify; stale once the manifest changes.

Approving a storage that passes is covered end to end in test_end_to_end.py.
"""

import pytest

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.pipeline.approve import approve
from weighted_mtp.pipeline.manifest import load_manifest, manifest_sha256, refresh_manifest
from weighted_mtp.pipeline.records import approval_status, load_approvals
from weighted_mtp.storage.atomic import write_json


def test_approval_is_refused_unless_verification_passes(layout):
    with pytest.raises(WmtpError, match=r"cannot approve.*Step 2"):
        approve(layout, "Reviewer")
    assert not layout.approvals.exists()


def test_approver_name_is_required(layout):
    with pytest.raises(UsageError):
        approve(layout, "   ")


def _record_approval_of_current_manifest(layout):
    manifest = load_manifest(layout)
    write_json(
        layout.approvals,
        {
            "approvals": [
                {
                    "by": "Reviewer",
                    "at": "2026-01-01T00:00:00+00:00",
                    "manifest_sha256": manifest_sha256(layout),
                    "files": {e["path"]: e["sha256"] for e in manifest["files"]},
                }
            ]
        },
    )


def test_status_is_current_then_stale_naming_the_changed_file(layout):
    small = layout.small("mbpp").split("train")
    small.write_text('{"x": 1}\n')
    refresh_manifest(layout)
    _record_approval_of_current_manifest(layout)
    ok, detail, files = approval_status(layout)
    assert ok and "Reviewer" in detail and files == []

    small.write_text('{"x": 2}\n')
    refresh_manifest(layout)
    ok, detail, files = approval_status(layout)
    assert not ok
    assert "stale" in detail
    assert files == [layout.relative(small)]


def test_no_approval_and_a_damaged_file_are_reported(layout):
    ok, detail, _ = approval_status(layout)
    assert not ok and "not approved yet" in detail
    layout.approvals.write_text('{"approvals": 3}')
    ok, detail, files = approval_status(layout)
    assert not ok and "no list of approvals" in detail and files == ["APPROVALS.json"]
    with pytest.raises(WmtpError):
        load_approvals(layout)


def test_files_that_differ_from_an_approved_manifest_make_it_stale(layout):
    small = layout.small("mbpp").split("train")
    small.write_text('{"x": 1}\n')
    refresh_manifest(layout)
    _record_approval_of_current_manifest(layout)
    ok, detail, files = approval_status(layout, [layout.relative(small)])
    assert not ok and "stale" in detail and files == [layout.relative(small)]
