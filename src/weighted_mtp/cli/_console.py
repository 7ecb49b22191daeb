"""Shared CLI plumbing: global state, consoles, the rich progress reporter."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from weighted_mtp import progress
from weighted_mtp.catalog import Catalog, load_catalog
from weighted_mtp.checks import Report
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.lock import writing_to_storage

if TYPE_CHECKING:
    from rich.console import Console

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
MirrorOpt = Annotated[
    Path | None,
    typer.Option(
        "--mirror", help="A local folder laid out like the upstream repo, instead of the hub."
    ),
]
RevisionOpt = Annotated[
    str | None, typer.Option(help="Hub branch, tag or commit (default: the catalog's).")
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print what a hub download would fetch and where (no network, nothing written).",
    ),
]


class LazyConsole:
    """A rich `Console` made on first use: importing rich costs about a quarter second of
    start-up that `wmtp --help` and commands printing nothing do not need."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        """The console itself (for rich APIs that take one)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """rich's `print`, except that a line of text wraps only between words: rich folds a
        word longer than the rest of the line (a path, a command) mid-word, which makes it
        unreadable and impossible to copy; here it moves whole to a line of its own, and one
        longer than the terminal runs past its edge. Tables and other renderables, and text
        printed with `soft_wrap`, are rich's."""
        console = self.get()
        if len(objects) != 1 or not isinstance(objects[0], str) or "soft_wrap" in kwargs:
            console.print(*objects, **kwargs)
            return
        text = console.render_str(
            objects[0], highlight=kwargs.pop("highlight", None), markup=kwargs.pop("markup", None)
        )
        for line in text.split(allow_blank=True):
            for part in line.divide(word_breaks(line.plain, console.width)):
                part.rstrip()
                console.print(part, soft_wrap=True, **kwargs)


def word_breaks(line: str, width: int) -> list[int]:
    """Where a line of text breaks to fit `width` columns: before a word that would cross
    the edge, never inside one."""
    from rich.cells import cell_len

    breaks: list[int] = []
    start = 0
    for word in re.finditer(r"\S+", line):
        if word.start() > start and cell_len(line[start : word.end()]) > width:
            breaks.append(word.start())
            start = word.start()
    return breaks


console = LazyConsole()
err_console = LazyConsole(stderr=True)


def escape(text: str) -> str:
    """rich's markup escape, rich imported on use (see `LazyConsole`)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def checked_layout(root: Path) -> Layout:
    """The layout of `root`, which must be a folder if it exists (a file is one line)."""
    layout = Layout(root)
    if layout.root.exists() and not layout.root.is_dir():
        raise WmtpError(
            "the storage root is not a folder",
            path=layout.root,
            hint="give --root (or WMTP_ROOT) a folder; a missing one is created",
        )
    return layout


@dataclass
class State:
    root: Path
    catalog_path: Path | None = None
    root_given: bool = False  # `wmtp --root X` on the command line (not WMTP_ROOT's default)

    def own_root(self, command_root: Path | None, default: Path) -> Path:
        """The root of a command with its own `--root` (the demo): that one, else the global
        `--root` given on the command line, else `default`; both given must agree. WMTP_ROOT
        does not count: the demo never writes into the storage a user configured."""
        if command_root is None:
            return self.root if self.root_given else default
        if self.root_given and Layout(command_root).root != Layout(self.root).root:
            raise UsageError(
                f"--root given twice: {self.root} before the command, {command_root} after it",
                hint="give it once",
            )
        return command_root

    @cached_property
    def layout(self) -> Layout:
        return checked_layout(self.root)

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)


def checked_name(name: str, allowed: tuple[str, ...], kind: str) -> str:
    """An asset name this command accepts; anything else is a usage error listing the choices."""
    if name not in allowed:
        raise UsageError(
            f"unknown {kind} {name!r} for this command", hint=f"choose one of: {', '.join(allowed)}"
        )
    return name


def state(ctx: typer.Context) -> State:
    return cast(State, ctx.find_root().obj)  # set by the root callback, `main`


@contextmanager
def writing(ctx: typer.Context) -> Iterator[Layout]:
    """For a command that writes to the storage: hold the storage lock (one line naming the
    running process if another wmtp holds it) and first remove the temporary files that
    killed runs left in the asset folders."""
    layout = state(ctx).layout
    with writing_to_storage(layout, ctx.command_path):
        yield layout


LOG_LABELS = {  # each level's mark; a level between two takes the lower one's
    logging.DEBUG: "[dim]debug:[/]",
    logging.INFO: "[cyan]note:[/]",
    logging.WARNING: "[yellow]warning:[/]",
    logging.ERROR: "[bold red]error:[/]",
}


class ConsoleHandler(logging.Handler):
    """The package's log records on the stderr console that draws the progress bars (rich
    keeps a live bar below the lines printed meanwhile), one record a line: `note: ...`,
    `debug: ...`, `warning: ...`. rich's own `RichHandler` wraps a message at the terminal's
    width and folds a long path mid-word; these lines are never wrapped by rich, so a path
    stays whole to copy."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = max((n for n in LOG_LABELS if n <= record.levelno), default=logging.DEBUG)
            label = LOG_LABELS[level]
            err_console.print(
                f"{label} {escape(self.format(record))}", highlight=False, soft_wrap=True
            )
        except Exception:
            self.handleError(record)


def configure_logging(verbosity: int, all_ranks: bool) -> None:
    """The CLI's log: `-q` -> -1, `-v` -> 1 (see `progress.configure_logging`)."""
    progress.configure_logging(ConsoleHandler(), verbosity, all_ranks)


class RichReporter:
    """Progress bars and status lines on stderr; each removed when its work finishes."""

    @contextmanager
    def status(self, description: str) -> Iterator[None]:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=err_console.get(), transient=True) as line:
            line.add_task(description, total=None)
            yield

    @contextmanager
    def task(self, description: str, total: float | None, unit: str) -> Iterator[progress.Advance]:
        from rich.progress import (  # ~0.1 s: only when something long runs, not for --help
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[ProgressColumn]
        if unit == "bytes":
            columns = [
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            ]
        else:
            columns = [
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
            ]
        with Progress(*columns, console=err_console.get(), transient=True) as bars:
            task_id = bars.add_task(description, total=total, note="")
            yield lambda n, note="": bars.update(task_id, advance=n, note=note)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Show library progress while a command runs (not with --json or -q, not off a
    terminal, and under torchrun on global rank 0 only, even with --log-all-ranks)."""
    if enabled and progress.shows() and progress.global_rank() == 0 and err_console.is_terminal:
        progress.use_reporter(RichReporter())
    try:
        yield
    finally:
        progress.use_reporter(None)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_plan(plan: dict[str, Any], as_json: bool, mirror: Path | None) -> None:
    """A download plan (`--dry-run`): repo, revision, and each file's destination and hash."""
    if mirror is not None:
        raise UsageError("--dry-run plans a hub download; drop --mirror")
    if as_json:
        print_json(plan)
        return
    console.print(
        f"[bold]{plan['repo']}[/] ({plan['repo_type']}) at {plan['revision']}", highlight=False
    )
    for entry in plan["files"]:
        sha = entry["sha256"] or "unknown (recorded at download)"
        console.print(
            f"  {entry['path']} -> {entry['dest']}  sha256 {sha}", highlight=False, soft_wrap=True
        )


def print_report(report: Report) -> None:
    """A checklist: one line per check, ✔ or ✘, with the reason and files for failures."""
    console.print(f"[bold]{report.subject}[/]")
    for check in report.checks:
        mark = "[green]✔[/]" if check.ok else "[red]✘[/]"
        line = f"  {mark} {escape(check.name)}"
        if check.detail:
            line += f": {escape(check.detail)}"
        if check.files and not check.ok:
            line += f" ({escape(', '.join(check.files))})"
        console.print(line, highlight=False, soft_wrap=True)
    verdict = (
        "[green]all checks passed[/]"
        if report.ok
        else (f"[red]{len(report.failures())} check(s) failed[/]")
    )
    console.print(f"  {verdict}")


def finish_report(report: Report, as_json: bool) -> None:
    """Print a verification report and exit 1 if anything failed."""
    if as_json:
        print_json(report.to_dict())
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(1)
