"""`wmtp storage`: create, inspect and clean the storage layout."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weighted_mtp.cli._console import JsonOpt, console, print_json, state, writing
from weighted_mtp.storage.tree import human_size

if TYPE_CHECKING:
    from rich.tree import Tree

    from weighted_mtp.storage.clean import CleanPlan
    from weighted_mtp.storage.layout import Layout
    from weighted_mtp.storage.status import TreeNode

app = typer.Typer(help="Create, inspect and clean the storage layout.", no_args_is_help=True)


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the storage layout (idempotent; never deletes or overwrites)."""
    from weighted_mtp.storage.init import init_storage

    with writing(ctx) as layout:
        result = init_storage(layout)
    console.print(
        f"storage layout at [bold]{layout.root}[/]: {len(result.created)} created, "
        f"{len(result.existing)} already present"
    )


@app.command()
def clean(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (default: only list).")] = False,
    legacy: Annotated[
        bool, typer.Option("--legacy", help="Also remove the legacy models/ and datasets/.")
    ] = False,
    keep: Annotated[
        list[Path] | None, typer.Option("--keep", help="A path under the root to keep.")
    ] = None,
) -> None:
    """Remove the assets for a clean start, keeping caches and ongoing downloads."""
    from weighted_mtp.storage.clean import execute_clean, plan_clean

    # Deleting takes the storage lock first, so a running build's files are never touched.
    with writing(ctx) if yes else nullcontext(state(ctx).layout) as layout:
        plan = plan_clean(layout, legacy=legacy, keep=keep or [])
        _print_plan(layout, plan, yes)
        if plan.remove and yes:
            execute_clean(layout, plan)
            console.print(
                f"removed {len(plan.remove)} path(s), freed {human_size(plan.bytes_to_free)}"
            )


def _print_plan(layout: Layout, plan: CleanPlan, yes: bool) -> None:
    from rich.table import Table  # on use: rich is slow to import

    table = Table("action", "path", "size", box=None)
    for path, size in plan.remove:
        table.add_row(
            "[red]remove[/]" if yes else "would remove", layout.relative(path), human_size(size)
        )
    for path, reason in plan.keep:
        table.add_row("[green]keep[/]", layout.relative(path), reason)
    if plan.remove or plan.keep:
        console.print(table)
    if not plan.remove:
        console.print("nothing to remove")
    elif not yes:
        console.print(
            f"{len(plan.remove)} path(s), {human_size(plan.bytes_to_free)}; "
            "nothing deleted: rerun with --yes to delete"
        )


def _rich_tree(node: TreeNode, parent: Tree) -> None:
    for child in node.children:
        label = f"{child.name}{'/' if child.is_dir else ''} [dim]{human_size(child.size)}[/]"
        _rich_tree(child, parent.add(label, highlight=False))


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    depth: Annotated[int, typer.Option(help="Tree depth to show.")] = 3,
) -> None:
    """Show the storage tree with sizes and each asset's state."""
    from weighted_mtp.storage.status import asset_statuses, storage_tree

    layout = state(ctx).layout
    if not layout.root.is_dir():
        from weighted_mtp.errors import WmtpError

        raise WmtpError(
            "storage root does not exist", path=layout.root, hint="run `wmtp storage init` first"
        )
    tree = storage_tree(layout.root, depth)
    assets = asset_statuses(layout)
    if as_json:
        print_json(
            {"root": str(layout.root), "tree": tree.to_dict(), "assets": [vars(a) for a in assets]}
        )
        return
    from rich.table import Table  # on use: rich is slow to import
    from rich.tree import Tree

    # The root on a line of its own: as the tree's label it would fold at the tree's width.
    console.print(f"[bold]{layout.root}[/] [dim]{human_size(tree.size)}[/]", highlight=False)
    top = Tree("", hide_root=True)
    _rich_tree(tree, top)
    console.print(top)
    colors = {"missing": "red", "raw-only": "yellow", "verified": "green", "present": "green"}
    table = Table("kind", "asset", "state", "size", title="assets")
    for row in assets:
        color = colors.get(row.state, "cyan")
        table.add_row(row.kind, row.name, f"[{color}]{row.state}[/]", human_size(row.size))
    console.print(table)
