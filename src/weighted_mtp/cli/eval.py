"""`wmtp eval`: score samples in a sandbox, and generate + score end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from weighted_mtp.cli._console import (
    JsonOpt,
    checked_name,
    console,
    print_json,
    progress_bars,
    state,
)
from weighted_mtp.storage.layout import DATASETS

app = typer.Typer(
    help="Evaluate code models: sandboxed scoring, generation, pass@k.", no_args_is_help=True
)


DatasetOpt = Annotated[str, typer.Option("--dataset", help=f"One of: {', '.join(DATASETS)}.")]
KOpt = Annotated[str, typer.Option("--k", help="pass@k for these k (comma-separated).")]
SplitOpt = Annotated[
    str, typer.Option(help="Split whose raw records hold the tasks (CodeContests).")
]
WorkersOpt = Annotated[int, typer.Option(help="Samples executed in parallel.")]


def _limits(timeout: float | None):
    from weighted_mtp.eval.sandbox import SandboxLimits

    return SandboxLimits() if timeout is None else SandboxLimits(timeout=timeout)


def print_summary(summary: dict) -> None:
    table = Table(
        "metric",
        "value",
        box=None,
        title=f"{summary['dataset']} ({summary['n_samples']} samples, {summary['n_tasks']} tasks)",
    )
    for name, value in summary["pass_at_k"].items():
        table.add_row(name, "n/a (fewer samples than k)" if value is None else f"{value:.4f}")
    for result, count in summary["results"].items():
        table.add_row(result, str(count))
    table.add_row(
        "samples/s", f"{summary['samples_per_second']:.1f} ({summary['workers']} workers)"
    )
    console.print(table)


@app.command()
def score(
    ctx: typer.Context,
    dataset: DatasetOpt,
    samples: Annotated[
        Path, typer.Option("--samples", help="JSONL: task_id + completion per line.")
    ],
    k: KOpt = "1,10,100",
    split: SplitOpt = "test",
    workers: WorkersOpt = 2,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds per sample (CodeContests: per test; default: the problem's limit)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Execute samples against the tasks' tests; write per-sample results and pass@k."""
    from weighted_mtp.eval.scoring import parse_ks, results_path, score_samples

    dataset = checked_name(dataset, DATASETS, "dataset")
    with progress_bars(not as_json):
        summary = score_samples(
            state(ctx).layout,
            dataset,
            samples,
            ks=parse_ks(k),
            split=split,
            workers=workers,
            limits=_limits(timeout),
        )
    if as_json:
        print_json(summary.to_dict())
        return
    print_summary(summary.to_dict())
    console.print(f"results: {results_path(samples)}", highlight=False)
