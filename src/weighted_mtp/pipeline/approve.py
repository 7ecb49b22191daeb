"""APPROVALS.json: who approved which exact storage state (the seed's Step 11 sign-off).

An approval names the SHA-256 of MANIFEST.json, which lists every asset file's hash, so it
covers precisely the bytes that were verified; any later change to an asset changes the
manifest and makes the approval stale. A copy of the approved file hashes lets `verify` say
which files changed since.
"""

from __future__ import annotations

from weighted_mtp.checks import listed
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.pipeline.manifest import load_manifest, manifest_sha256
from weighted_mtp.storage.atomic import read_json, write_json
from weighted_mtp.storage.layout import STORAGE_VERSION, Layout

APPROVE_HINT = "review reports/ and run `wmtp approve --by NAME`"
DEFAULT_TAG = f"v{STORAGE_VERSION}"


def load_approvals(layout: Layout) -> list[dict]:
    if not layout.approvals.is_file():
        return []
    data = read_json(layout.approvals, "approvals file")
    approvals = data.get("approvals") if isinstance(data, dict) else None
    if not isinstance(approvals, list) or not all(isinstance(a, dict) for a in approvals):
        raise WmtpError(
            "approvals file has no list of approvals",
            path=layout.approvals,
            hint="restore it from a backup or delete it and approve again",
        )
    return approvals


def _files_changed_since(approval: dict, manifest: dict | None) -> list[str]:
    approved = approval.get("files", {})
    current = {e["path"]: e["sha256"] for e in manifest["files"]} if manifest else {}
    return sorted(p for p in approved.keys() | current.keys() if approved.get(p) != current.get(p))


def approval_status(
    layout: Layout, differs_from_manifest: list[str] = ()
) -> tuple[bool, str, list[str]]:
    """(current?, explanation, files changed since the latest approval). Files that differ
    from the manifest (found by verification) make even an approval of it stale."""
    rel = layout.relative(layout.approvals)
    try:
        approvals = load_approvals(layout)
    except WmtpError as exc:
        return False, exc.line(), [rel]
    if not approvals:
        return False, f"not approved yet; {APPROVE_HINT}", [rel]
    latest = approvals[-1]
    who = f"{latest.get('by')} at {latest.get('at')}"
    if latest.get("manifest_sha256") == manifest_sha256(layout):
        if not differs_from_manifest:
            return True, f"approved by {who}", []
        changed = sorted(differs_from_manifest)
    else:
        changed = _files_changed_since(latest, load_manifest(layout))
    detail = f"approval by {who} is stale: the assets changed since"
    if changed:
        detail += f" ({len(changed)} file(s))"
    return False, f"{detail}; {APPROVE_HINT}", changed or [rel]


def tag_status(layout: Layout) -> tuple[bool, str, list[str]]:
    """(current?, explanation, files): the latest approval is of the current manifest and
    names a tag."""
    try:
        approvals = load_approvals(layout)
    except WmtpError as exc:
        return False, exc.line(), [layout.relative(layout.approvals)]
    latest = approvals[-1] if approvals else {}
    tag = latest.get("tag")
    current = manifest_sha256(layout)
    if tag and current and latest.get("manifest_sha256") == current:
        return True, f"tag {tag} names MANIFEST.json sha256 {current[:12]}…", []
    detail = f"tag {tag} names an earlier manifest" if tag else "the current state carries no tag"
    return False, f"{detail}; run `wmtp approve --by NAME [--tag NAME]`", []


def check_tag_is_free(approvals: list[dict], tag: str, manifest: str | None) -> None:
    """A tag names one storage state: it cannot move to another manifest."""
    for earlier in approvals:
        if earlier.get("tag") == tag and earlier.get("manifest_sha256") != manifest:
            raise UsageError(
                f"tag {tag} already names MANIFEST.json sha256 "
                f"{str(earlier.get('manifest_sha256'))[:12]}… (approved {earlier.get('at')})",
                hint="choose another --tag, e.g. the next version",
            )


def approve(layout: Layout, by: str, tag: str = DEFAULT_TAG) -> dict:
    """Record an approval of the current storage under `tag`; refused unless Steps 0-10 all
    pass."""
    from weighted_mtp.pipeline.checklist import run_checklist

    by, tag = " ".join(by.split()), tag.strip()
    if not by:
        raise UsageError("--by needs the approver's name")
    if not tag or any(c.isspace() for c in tag):
        raise UsageError("--tag needs a name without spaces, e.g. v2.0.0")
    checklist = run_checklist(layout, through=10)
    if not checklist.ok:
        failed_steps = checklist.failed()
        failed = [step.number for step in failed_steps]
        first = failed_steps[0]
        files = list(dict.fromkeys(f for step in failed_steps for f in step.files))
        raise WmtpError(
            f"cannot approve: Step{'s' if len(failed) > 1 else ''} "
            f"{', '.join(map(str, failed))} fail (Step {first.number}: {first.reason})",
            path=listed(files) if files else None,
            hint="`wmtp verify` lists every failure; fix them, then approve",
        )
    manifest = load_manifest(layout)
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
