"""`wmtp data`: download, prepare, subset, validate and describe the datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from weighted_mtp.cli._console import (
    DryRunOpt,
    JsonOpt,
    MirrorOpt,
    RevisionOpt,
    checked_name,
    console,
    escape,
    finish_report,
    print_json,
    print_plan,
    progress_bars,
    state,
    writing,
)
from weighted_mtp.errors import UsageError
from weighted_mtp.storage.layout import DATASETS, SPLITS, Layout

app = typer.Typer(
    help="Download, prepare, subset, validate and describe the datasets.", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(DATASETS)}.")]


@app.command()
def download(
    ctx: typer.Context,
    name: NameArg,
    mirror: MirrorOpt = None,
    revision: RevisionOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a dataset (hub or --mirror) and write raw/*.jsonl, SOURCE.json, checksums."""
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.models.upstream_download import plan_download

    st, name = state(ctx), checked_name(name, DATASETS, "dataset")
    if dry_run:
        plan = plan_download(
            st.layout, st.catalog.dataset(name), st.layout.dataset(name).root, revision
        )
        print_plan(plan.to_dict(), as_json, mirror)
        return
    with writing(ctx), progress_bars(not as_json):
        source = download_dataset(st.layout, st.catalog, name, mirror=mirror, revision=revision)
    if as_json:
        print_json(source)
        return
    for file, entry in source["raw_files"].items():
        console.print(f"raw/{file}: {entry['rows']} rows, sha256 {entry['sha256'][:16]}…")


SUMMARY_COLUMNS = ("records", "tasks", "correct", "incorrect", "dropped", "shortened", "truncated")


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table  # on use: rich is slow to import

    table = Table(
        "split",
        *SUMMARY_COLUMNS,
        box=None,
        title=f"{summary['dataset']} (max length {summary['max_length']}, seed {summary['seed']})",
    )
    for split, entry in summary["splits"].items():
        table.add_row(
            split,
            *(str(entry[k]) for k in SUMMARY_COLUMNS),
        )
    console.print(table)
    for split, entry in summary["splits"].items():
        lengths = "; ".join(
            f"{kind} {v['min']}/{v['p50']}/{v['p95']}/{v['max']}"
            for kind, v in entry["tokens"].items()
            if v
        )
        console.print(f"{split} tokens min/p50/p95/max: {lengths}", highlight=False)
    for kind, reasons in summary.get("rejected", {}).items():
        for reason, entry in reasons.items():
            console.print(
                f"[yellow]rejected {entry['count']} {kind}[/]: {escape(reason)} "
                f"(first: {escape(entry['first'])})",
                highlight=False,
            )


@app.command()
def prepare(
    ctx: typer.Context,
    name: NameArg,
    max_length: Annotated[int, typer.Option(help="Max tokens: BOS+prompt+response+EOS.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed for hash splits.")] = 42,
    tokenizer: Annotated[
        Path | None, typer.Option(help="SentencePiece model (default: the Meta model's tokenizer).")
    ] = None,
    truncate_code: Annotated[
        bool,
        typer.Option("--truncate-code", help="Cut over-long code (marked) instead of dropping it."),
    ] = False,
    languages: Annotated[
        list[str] | None,
        typer.Option(
            "--languages", help="CodeContests languages to keep (repeatable; default python3)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn raw JSONL into processed/{split}.jsonl, schema.json and a dated summary."""
    from weighted_mtp.data.prepare import prepare_dataset

    name = checked_name(name, DATASETS, "dataset")
    with writing(ctx) as layout, progress_bars(not as_json):
        summary = prepare_dataset(
            layout,
            name,
            max_length=max_length,
            seed=seed,
            tokenizer=tokenizer,
            truncate_code=truncate_code,
            languages=languages,
        )
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


def _named_or_prepared(layout: Layout, name: str | None) -> list[str]:
    """The dataset named on the command line, else every prepared one."""
    from weighted_mtp.data.validate import prepared_datasets

    names = [checked_name(name, DATASETS, "dataset")] if name else prepared_datasets(layout)
    if not names:
        raise UsageError("no prepared dataset", hint="run `wmtp data prepare NAME` first")
    return names


@app.command()
def small(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="A dataset (default: all prepared).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the selection.")] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Write datasets_local_small/{name}_small/ (<=100 train, <=32 validation/test)."""
    from weighted_mtp.data.small import build_small

    with writing(ctx) as layout:
        names = _named_or_prepared(layout, name)
        results = {n: build_small(layout, n, seed=seed) for n in names}
    if as_json:
        print_json(results)
        return
    for splits in results.values():
        for split in SPLITS:
            if split in splits:
                entry = splits[split]
                console.print(
                    f"{entry['path']}: {entry['records']} records "
                    f"({entry['correct']} correct, {entry['incorrect']} incorrect)"
                )


@app.command()
def validate(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="A dataset (default: all prepared).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check records, token lengths, checksums, split disjointness and small sets."""
    from weighted_mtp.checks import Report
    from weighted_mtp.data.validate import validate_dataset

    with writing(ctx) as layout, progress_bars(not as_json):  # records them in the freshness store
        names = _named_or_prepared(layout, name)
        reports = [validate_dataset(layout, n) for n in names]
    if len(reports) == 1:
        finish_report(reports[0], as_json)
        return
    combined = Report("datasets")
    for report in reports:
        for check in report.checks:
            combined.add(f"{report.subject}: {check.name}", check.ok, check.detail, check.files)
    finish_report(combined, as_json)


@app.command()
def stats(
    ctx: typer.Context,
    name: NameArg,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG histogram of token lengths per split."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the latest preparation summary of a dataset."""
    from weighted_mtp.data.stats import latest_summary, plot_lengths

    name = checked_name(name, DATASETS, "dataset")
    path, summary = latest_summary(state(ctx).layout.dataset(name))
    if as_json:
        print_json(summary)
    else:
        console.print(f"[dim]{path}[/]")
        _print_summary(summary)
        for split, entry in summary["splits"].items():
            console.print(f"{split} languages: {entry['languages']}", highlight=False)
    if plot is not None:
        written = plot_lengths(summary, plot)
        if not as_json:
            console.print(f"histogram written to {written}")


@app.command()
def contamination(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", "--ngram", help="n-gram length in tokens.")] = 13,
    as_json: JsonOpt = False,
) -> None:
    """n-gram overlap of the training splits with the evaluation splits (reports/)."""
    from weighted_mtp.eval.contamination import contamination_path, find_contamination

    layout = state(ctx).layout
    with progress_bars(not as_json):
        report = find_contamination(layout, n)
    if as_json:
        print_json(report.to_dict())
        return
    console.print(f"tokens: {report.tokenizer}", highlight=False)
    for line, split in zip(report.summary_lines(), report.splits, strict=True):
        console.print(line, highlight=False)
        for task in split.contaminated:
            records = ", ".join(f"{o.sample_id} ({o.shared_ngrams})" for o in task.listed[:3])
            more = f" and {task.train_records - 3} more" if task.train_records > 3 else ""
            console.print(f"  {task.task_id}: {records}{more}", highlight=False)
    console.print(f"written: {contamination_path(layout)}", highlight=False)
