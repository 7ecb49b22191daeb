"""The `wmtp` command line: parses arguments, calls the library, prints results.

Command modules import heavy libraries (torch, transformers) inside the commands that need
them, so `wmtp --help` and `wmtp storage ...` start in well under a second.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated

import typer

from weighted_mtp.cli import data, models, pipeline, storage, train
from weighted_mtp.cli import eval as evaluation
from weighted_mtp.cli._console import State, configure_logging, err_console, escape
from weighted_mtp.errors import UsageError, WmtpError

INTERRUPTED = 130
# OS failures the user fixes: one line with a hint, no traceback. Permissions and disks ...
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT}
# ... and paths of the wrong shape (--root naming a file, a file where a folder must be).
PATH_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}

app = typer.Typer(
    name="wmtp",
    help="Weighted Multi-Token Prediction research: build and verify the storage, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: typer's rich help imports ~0.3 s of modules
)
app.add_typer(storage.app, name="storage")
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(evaluation.app, name="eval")
app.add_typer(train.app, name="train")
pipeline.register(app)


def _version(value: bool) -> None:
    if value:
        from weighted_mtp import __version__

        typer.echo(f"wmtp {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    root: Annotated[
        Path,
        typer.Option("--root", envvar="WMTP_ROOT", help="Storage root.", show_default=True),
    ] = Path("storage"),
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            envvar="WMTP_CATALOG",
            help="Asset catalog YAML replacing the packaged one.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show debug lines: phases and timings.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Only warnings and errors: no notes, no progress."),
    ] = False,
    all_ranks: Annotated[
        bool,
        typer.Option(
            "--log-all-ranks",
            envvar="WMTP_LOG_ALL_RANKS",
            help="Under torchrun, log on every rank (each line names it), not only rank 0.",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    if verbose and quiet:
        raise UsageError("-v and -q both given", hint="give one of them")
    configure_logging(1 if verbose else -1 if quiet else 0, all_ranks)
    source = ctx.get_parameter_source("root")
    given = source is not None and source.name == "COMMANDLINE"
    ctx.obj = State(root=root, catalog_path=catalog, root_given=given)


def _exit_with(error: WmtpError) -> None:
    err_console.print(
        f"[bold red]error:[/] {escape(error.line())}", highlight=False, soft_wrap=True
    )
    sys.exit(error.exit_code)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        # Without standalone mode click returns the exit code (130 for Ctrl-C) instead of
        # raising typer.Exit.
        code = app(standalone_mode=False) or 0
    except WmtpError as exc:
        _exit_with(exc)
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS | PATH_ERRNOS:
            raise
        hint = (
            "check the folder's permissions and free space"
            if exc.errno in ENVIRONMENT_ERRNOS
            else "check --root and the paths given: a file stands where a folder belongs, "
            "or the reverse"
        )
        _exit_with(WmtpError(exc.strerror or str(exc), path=exc.filename, hint=hint))
    except typer.TyperException as exc:  # typer's own errors (it has no `show()`)
        _exit_with(UsageError(exc.format_message()))
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:  # before a command started (click handles it inside one)
        code = INTERRUPTED
    if code == INTERRUPTED:
        err_console.print("[yellow]interrupted[/]; rerun the command to resume")
    sys.exit(code)
