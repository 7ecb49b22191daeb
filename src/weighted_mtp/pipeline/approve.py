"""`wmtp approve`: record who approved which exact storage state in APPROVALS.json.

An approval names the SHA-256 of MANIFEST.json, which lists every asset file's hash, so it
covers precisely the bytes that were verified; any later change to an asset changes the
manifest and makes the approval stale. A copy of the approved file hashes lets `verify` say
which files changed since (`records.approval_status`).
"""

from __future__ import annotations

from typing import Any

from weighted_mtp.checks import listed
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.pipeline.checklist import run_checklist
from weighted_mtp.pipeline.manifest import load_manifest
from weighted_mtp.pipeline.plan import BEFORE_APPROVAL, DEFAULT_TAG
from weighted_mtp.pipeline.records import load_approvals
from weighted_mtp.storage.atomic import write_json
from weighted_mtp.storage.layout import STORAGE_VERSION, Layout


def check_tag_is_free(approvals: list[dict[str, Any]], tag: str, manifest: str | None) -> None:
    """A tag names one storage state: it cannot move to another manifest."""
    for earlier in approvals:
        if earlier.get("tag") == tag and earlier.get("manifest_sha256") != manifest:
            raise UsageError(
                f"tag {tag} already names MANIFEST.json sha256 "
                f"{str(earlier.get('manifest_sha256'))[:12]}… (approved {earlier.get('at')})",
                hint="choose another --tag, e.g. the next version",
            )


def approve(layout: Layout, by: str, tag: str = DEFAULT_TAG) -> dict[str, Any]:
    """Record an approval of the current storage under `tag`; refused unless every check
    before the approval passes."""
    by, tag = " ".join(by.split()), tag.strip()
    if not by:
        raise UsageError("--by needs the approver's name")
    if not tag or any(c.isspace() for c in tag):
        raise UsageError("--tag needs a name without spaces, e.g. v2.0.0")
    checklist = run_checklist(layout, through=BEFORE_APPROVAL[-1])
    if not checklist.ok:
        failed_steps = checklist.failed()
        failed = [str(step.number) for step in failed_steps]
        first = failed_steps[0]
        files = list(dict.fromkeys(f for step in failed_steps for f in step.files))
        raise WmtpError(
            f"cannot approve: Step{'s' if len(failed) > 1 else ''} "
            f"{', '.join(failed)} fail ({first.label}: {first.reason})",
            path=listed(files) if files else None,
            hint="`wmtp verify` lists every failure; fix them, then approve",
        )
    manifest = load_manifest(layout) or {"files": []}
    approvals = load_approvals(layout)
    check_tag_is_free(approvals, tag, checklist.manifest_sha256)
    record = {
        "by": by,
        "at": utc_now(),
        "tag": tag,
        "storage_version": STORAGE_VERSION,
        "manifest_sha256": checklist.manifest_sha256,
        "files": {e["path"]: e["sha256"] for e in manifest["files"]},
    }
    write_json(layout.approvals, {"approvals": [*approvals, record]})
    return record
