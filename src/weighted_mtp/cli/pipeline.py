"""Top-level whole-storage commands: build, verify, report, approve, backup, demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weighted_mtp import progress
from weighted_mtp.cli._console import (
    JsonOpt,
    checked_layout,
    console,
    escape,
    print_json,
    progress_bars,
    state,
    writing,
)
from weighted_mtp.interrupts import import_torch
from weighted_mtp.pipeline.plan import DEFAULT_TAG, SIGN_OFF_GROUP
from weighted_mtp.storage.lock import writing_to_storage

if TYPE_CHECKING:
    from weighted_mtp.pipeline.build import BuildResult, Step, StepOutcome
    from weighted_mtp.pipeline.demo import DemoResult
    from weighted_mtp.pipeline.records import Checklist

MAX_FILES_SHOWN = 8
STATUS_MARKS = {
    "ran": "[green]✔ ran[/]",
    "skipped": "[dim]· skipped[/]",
    "failed": "[red]✘ failed[/]",
    "interrupted": "[yellow]✘ interrupted[/]",
}


def _files(files: list[str]) -> str:
    shown = ", ".join(files[:MAX_FILES_SHOWN])
    more = len(files) - MAX_FILES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def print_checklist(checklist: Checklist) -> None:
    """One line per checklist step: ✔/✘, title, reason, and the files of failed checks."""
    for step in checklist.steps:
        mark = "[green]✔[/]" if step.ok else "[red]✘[/]"
        line = f"{mark} {step.label}: {step.title} — {escape(step.reason)}"
        if step.files:
            line += f" [dim]({escape(_files(step.files))})[/]"
        console.print(line, highlight=False, soft_wrap=True)
        if step.group == SIGN_OFF_GROUP and step.ok:  # approval, tag and backup, each shown
            for check in step.report.checks[1:]:
                console.print(f"    {check.name}: {escape(check.detail)}", highlight=False)
    failed = checklist.failed()
    verdict = (
        "[green]every step ✔[/]"
        if not failed
        else f"[red]{len(failed)} step(s) ✘[/]: {', '.join(str(s.number) for s in failed)}"
    )
    console.print(verdict)


def _listener(event: str, step: Step, outcome: StepOutcome | None) -> None:
    if outcome is None:  # the step starts
        console.print(
            f"[bold]→ {step.name}[/] [dim](Step {step.checklist_step})[/] {step.describe}",
            highlight=False,
        )
        return
    line = f"  {STATUS_MARKS[outcome.status]} {step.name} in {outcome.seconds:.1f} s"
    if outcome.status == "skipped":  # a failure's reason follows as the error line
        line += f": {escape(outcome.detail)}"
    console.print(line, highlight=False, soft_wrap=True)


def _log_listener(event: str, step: Step, outcome: StepOutcome | None) -> None:
    """With --json, where stdout is the JSON alone: each step's outcome as a note."""
    if outcome is not None:
        detail = f": {outcome.detail}" if outcome.status == "skipped" else ""
        progress.logger.info(f"{step.name} {outcome.status} in {outcome.seconds:.1f} s{detail}")


def _summary(result: BuildResult) -> None:
    from rich.table import Table  # on use: rich is slow to import

    table = Table("step", "checklist step", "result", "seconds", title="build summary")
    for outcome in result.outcomes:
        table.add_row(
            outcome.name,
            str(outcome.checklist_step),
            STATUS_MARKS[outcome.status],
            f"{outcome.seconds:.1f}",
        )
    console.print(table)
    if result.recheck:
        console.print(
            f"re-checked what the last `wmtp verify` found damaged: {', '.join(result.recheck)}",
            highlight=False,
        )
    if not result.manifest_written:
        console.print("MANIFEST.json unchanged")
        return
    diff = result.manifest_diff
    console.print(
        f"MANIFEST.json updated: {len(diff.changed)} changed, {len(diff.unexpected)} "
        f"added, {len(diff.missing)} removed file(s)"
    )
    ran = {o.name for o in result.outcomes if o.status == "ran"}
    if not ran and diff.files():  # nothing this build did explains them
        console.print(
            f"[yellow]recorded changes made outside the build[/]: {escape(_files(diff.files()))}",
            highlight=False,
            soft_wrap=True,
        )


def verify(
    ctx: typer.Context,
    as_json: JsonOpt = False,
) -> None:
    """Check every asset and print the completion checklist, Step 0 to Step 11 (exit 0: all ✔)."""
    from weighted_mtp.pipeline.checklist import run_checklist

    with writing(ctx) as layout, progress_bars(not as_json):  # records its result
        checklist = run_checklist(layout)
    if as_json:
        print_json(checklist.to_dict())
    else:
        print_checklist(checklist)
    if not checklist.ok:
        raise typer.Exit(1)


def report(ctx: typer.Context) -> None:
    """Write reports/ and the storage README from the storage's actual state."""
    from weighted_mtp.pipeline.report import generate_reports

    with writing(ctx) as layout, progress_bars():
        paths = generate_reports(layout)
    for path in paths:
        console.print(f"wrote {layout.relative(path)}", highlight=False)


def approve(
    ctx: typer.Context,
    by: Annotated[str, typer.Option("--by", help="Who approves (name or e-mail).")],
    tag: Annotated[
        str, typer.Option("--tag", help="The name this storage state is released under.")
    ] = DEFAULT_TAG,
) -> None:
    """Record an approval and tag of the current storage in APPROVALS.json (only if it
    verifies)."""
    from weighted_mtp.pipeline.approve import approve as record_approval

    with writing(ctx) as layout, progress_bars():
        record = record_approval(layout, by, tag)
    console.print(
        f"approved by {record['by']} at {record['at']}, tag {record['tag']}: MANIFEST.json "
        f"sha256 {record['manifest_sha256']}",
        highlight=False,
    )


def backup(
    ctx: typer.Context,
    dest: Annotated[Path, typer.Argument(help="Backup folder (empty, or an earlier backup).")],
    as_json: JsonOpt = False,
) -> None:
    """Copy the storage to DEST (real copies, resumable), verify every byte against
    MANIFEST.json and record the backup; DEST is a storage root of its own."""
    from weighted_mtp.pipeline.backup import backup as run_backup

    with writing(ctx) as layout, progress_bars(not as_json):  # records the backup
        result = run_backup(layout, dest)
    if as_json:
        print_json(result.to_dict())
        return
    rate = result.copied_size / max(result.seconds, 1e-9) / 1e6
    console.print(
        f"backed up {result.files} files ({result.size / 1e6:.1f} MB) to {result.dest}: "
        f"{result.copied} copied ({result.copied_size / 1e6:.1f} MB, {rate:.0f} MB/s), "
        f"{result.files - result.copied} already there; every file verified against "
        f"MANIFEST.json sha256 {result.record['manifest_sha256']}",
        highlight=False,
        soft_wrap=True,
    )


def build(
    ctx: typer.Context,
    mirror: Annotated[
        Path | None,
        typer.Option(
            "--mirror",
            help="Folder with each asset's upstream files under "
            "DIR/<asset-name>/ instead of the hub.",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only this step (or group, e.g. download); repeatable."),
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start at this step.")] = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Fetch the selected download steps again (all, or the --only ones), even "
            "when the raw files already match their SOURCE.json.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the build steps in order; finished steps are skipped, interrupted ones resume.
    Raw files already downloaded are kept whatever their source (mirror or hub)."""
    from weighted_mtp.pipeline.build import build as run_build

    app_state = state(ctx)
    with progress_bars(not as_json):
        result = run_build(
            app_state.layout,
            app_state.catalog,
            mirror=mirror,
            only=only or [],
            start=start,
            refresh=refresh,
            listener=_log_listener if as_json else _listener,
        )
    if as_json:
        print_json(result.to_dict())
    else:
        _summary(result)


def demo(
    ctx: typer.Context,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="Storage root for the demo (its mirror goes beside it); `wmtp --root X demo` "
            "works too (WMTP_ROOT does not count).",
            show_default="demo-storage",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Offline end-to-end run: synthetic upstream sources, then the real build and verify."""
    from weighted_mtp.pipeline.demo import DEFAULT_ROOT, run_demo

    root = state(ctx).own_root(root, DEFAULT_ROOT)
    layout = checked_layout(root)
    with writing_to_storage(layout, "wmtp demo"), progress_bars(not as_json):
        import_torch()  # the demo needs it at once; a Ctrl-C meanwhile must not be lost
        listener = _log_listener if as_json else _listener
        result = run_demo(layout.root, state(ctx).catalog, listener=listener)
    if as_json:
        print_json(result.to_dict())
        if not result.checklist.ok:
            raise typer.Exit(1)
        return
    _summary(result.build)
    if result.approved_now:
        console.print(
            "recorded the demo's own approval and tag (its sources are synthetic; a real "
            "storage needs a person's `wmtp approve --by NAME`)"
        )
    if result.backed_up is not None:
        console.print(
            f"backed up to {result.backed_up.dest} and verified every byte "
            f"({result.backed_up.size / 1e6:.0f} MB in {result.backed_up.seconds:.1f} s)",
            highlight=False,
        )
    console.print()
    print_checklist(result.checklist)
    _next_steps(result)
    if not result.checklist.ok:
        raise typer.Exit(1)


def _next_steps(result: DemoResult) -> None:
    from weighted_mtp.pipeline.demo import backup_for

    root = result.layout.root
    console.print(
        f"""
[bold]where everything is[/]
  storage        {root}
  reports        {result.layout.reports_dir}
  manifest       {result.layout.manifest}
  mirror         {result.mirror}
  backup         {backup_for(root)}

[bold]what to run next[/]
  wmtp --root {root} storage status     # the tree and each asset's state
  wmtp --root {root} verify             # re-check every byte, Step 0 to Step 11
  wmtp --root {backup_for(root)} verify      # the backup is a storage of its own
  wmtp build --mirror {result.mirror}   # the same build into ./storage

[bold]the real build[/] (needs the hub, an HF token with the Meta license accepted, ~90 GB)
  hf auth login
  wmtp build && wmtp verify && wmtp approve --by "Your Name" && wmtp backup /other/disk/wmtp
""",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    for command in (build, verify, report, approve, backup, demo):
        app.command()(command)
