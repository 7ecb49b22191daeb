"""`wmtp eval`: score samples in a sandbox, and generate + score end to end.

Every option is spelled so that `torchrun ... -m weighted_mtp eval run ...` passes it on
untouched: no option is a prefix of one of torchrun's (torchrun's parser would claim it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weighted_mtp import progress
from weighted_mtp.assets import COMPARE_DATASETS, DATASETS, EVAL_DATASET, MICRO_MTP
from weighted_mtp.cli._console import (
    JsonOpt,
    checked_name,
    console,
    print_json,
    progress_bars,
    state,
)
from weighted_mtp.eval import defaults

if TYPE_CHECKING:
    from weighted_mtp.eval.compare import ComparedRun, Comparison, Evaluation
    from weighted_mtp.eval.sandbox.pool import SandboxLimits

app = typer.Typer(
    help="Evaluate code models: sandboxed scoring, generation, pass@k.", no_args_is_help=True
)


DatasetOpt = Annotated[str, typer.Option("--dataset", help=f"One of: {', '.join(DATASETS)}.")]
KOpt = Annotated[str, typer.Option("--k", help="pass@k for these k (comma-separated).")]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        help="Split of the benchmark whose tasks are evaluated (default: the dataset's "
        "evaluation split; MBPP: prompt, train, validation, test; HumanEval: test)."
    ),
]
TestsOpt = Annotated[
    str,
    typer.Option(
        "--tests",
        help="base: the benchmark's standard tests; all: MBPP's challenge tests too (the "
        "prompt says which run).",
    ),
]
WorkersOpt = Annotated[int, typer.Option(help="Samples executed in parallel.")]
NoIsolationOpt = Annotated[
    bool,
    typer.Option(
        "--no-isolation",
        help="Not root and no user namespaces: run the samples as yourself, unconfined (the "
        "results say so on their first line). See docs/evaluation-sandbox.md.",
    ),
]
# Generation options `run` and `compare` share.
SamplesOpt = Annotated[int, typer.Option("-n", "--samples", help="Samples per task.")]
TemperatureOpt = Annotated[float, typer.Option(help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
MaxNewTokensOpt = Annotated[
    int,
    typer.Option(
        help="Tokens per sample at most; prompts are cut to fit the rest of the model's context."
    ),
]
SpeculativeOpt = Annotated[
    bool,
    typer.Option(
        "--speculative",
        help="Self-speculative decoding with the MTP heads: samples from the same "
        "distribution (greedy: the same tokens). Faster only where a pass over a few tokens "
        "costs about one step and the heads' drafts are often accepted: a model whose trunk "
        "dwarfs its heads (the 7B), memory-bound. Slower on micro models (no trunk). Decodes "
        "one row at a time (no --batch-size): for many tasks or samples, batching (the "
        "default) gains more. See docs/evaluation-decoding.md.",
    ),
]
DraftHeadsOpt = Annotated[
    int | None,
    typer.Option(
        "--draft-heads",
        help="With --speculative: draft tokens per pass, 1..heads-1 (default: from the "
        "model's shape; all 3 extra heads of the 7B, 1 for a model without a trunk).",
    ),
]
BatchSizeOpt = Annotated[
    str,
    typer.Option(
        "--batch-size",
        help="Rows decoded together, across tasks and samples (continuous batching): N, or "
        "auto (as many as half the free GPU memory, or available RAM, holds caches for; at "
        "most 256 on a GPU, 32 on a CPU). On a CPU the samples are the same bit for bit for "
        "every value; on a GPU a greedy near-tie can go either way. Not with --speculative, "
        "which decodes one row at a time.",
        metavar="N|auto",
    ),
]
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N tasks.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch threads (default: torch's).")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        help="auto, cpu, cuda or cuda:N; auto takes this rank's GPU if there is one. "
        "Generates in bfloat16 where the device supports it, else float32."
    ),
]


def _isolation(no_isolation: bool) -> bool:
    """Whether samples are isolated; refuses up front (one line) where they cannot be."""
    from weighted_mtp.eval.sandbox.pool import require_isolation

    if not no_isolation:
        require_isolation()
    return not no_isolation


def _limits(timeout: float | None, no_isolation: bool) -> SandboxLimits:
    from weighted_mtp.eval.sandbox.pool import SandboxLimits

    isolation = _isolation(no_isolation)
    if timeout is None:
        return SandboxLimits(namespaces=isolation)
    return SandboxLimits(timeout=timeout, namespaces=isolation)


def print_scores(
    title: str,
    pass_at_k: dict[str, float | None],
    results: dict[str, int],
    plus_pass_at_k: dict[str, float | None] | None = None,
    plus_results: dict[str, int] | None = None,
) -> None:
    """pass@k and the verdicts; with plus tests, base and plus side by side."""
    from rich.table import Table  # on use: rich is slow to import

    def shown(value: float | None) -> str:
        return "n/a (fewer samples than k)" if value is None else f"{value:.4f}"

    console.print(title, highlight=False)  # as a table's title it would fold at its width
    plus = plus_pass_at_k is not None
    table = Table("metric", *(("base", "plus") if plus else ("value",)), box=None)
    for name, value in pass_at_k.items():
        table.add_row(
            name, shown(value), *([shown(plus_pass_at_k[name])] if plus_pass_at_k else [])
        )
    for result, count in results.items():
        more = [str((plus_results or {}).get(result, 0))] if plus else []
        table.add_row(result, str(count), *more)
    console.print(table)


@app.command()
def score(
    ctx: typer.Context,
    dataset: DatasetOpt,
    samples: Annotated[
        Path, typer.Option("--samples", help="JSONL: task_id + completion per line.")
    ],
    k: KOpt = "1,10,100",
    split: SplitOpt = None,
    tests: TestsOpt = "base",
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="Score a file that leaves tasks of the split unattempted (pass@k over the "
            "attempted tasks; the summary lists the others).",
        ),
    ] = False,
    workers: WorkersOpt = defaults.SANDBOX_WORKERS,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds per sample (default 3; CodeContests uses each problem's time "
            "limit per test)."
        ),
    ] = None,
    no_isolation: NoIsolationOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Execute samples against the tasks' tests; write per-sample results and pass@k."""
    from weighted_mtp.eval.problems import choose_benchmark
    from weighted_mtp.eval.scoring import parse_ks, results_path, score_samples

    dataset = checked_name(dataset, DATASETS, "dataset")
    choice = choose_benchmark(dataset, split or "", tests)
    with progress_bars(not as_json):
        summary = score_samples(
            state(ctx).layout,
            choice.dataset,
            samples,
            ks=parse_ks(k),
            split=choice.split,
            tests=choice.tests,
            workers=workers,
            limits=_limits(timeout, no_isolation),
            partial=partial,
        )
    if as_json:
        print_json(summary.to_dict())
        return
    title = f"{dataset}: {summary.n_samples} samples of {summary.n_tasks} tasks"
    if summary.unattempted:
        title += f" ({len(summary.unattempted)} of the split's tasks unattempted)"
    print_scores(
        title, summary.pass_at_k, summary.results, summary.plus_pass_at_k, summary.plus_results
    )
    console.print(
        f"executed {summary.samples_per_second:.1f} samples/s with {workers} workers; "
        f"results: {results_path(samples)}",
        highlight=False,
    )


@app.command()
def run(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Argument(
            help=f"A storage model (e.g. {MICRO_MTP}), or a finished training run: its "
            "folder, <experiment>/<run-id> or its run id under the storage's runs folder."
        ),
    ],
    dataset: DatasetOpt = EVAL_DATASET,
    samples: SamplesOpt = defaults.SAMPLES_PER_TASK,
    temperature: TemperatureOpt = defaults.TEMPERATURE,
    top_p: TopPOpt = defaults.TOP_P,
    max_new_tokens: MaxNewTokensOpt = defaults.MAX_NEW_TOKENS,
    speculative: SpeculativeOpt = False,
    draft_heads: DraftHeadsOpt = None,
    limit: LimitOpt = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    split: SplitOpt = None,
    tests: TestsOpt = "base",
    workers: WorkersOpt = defaults.SANDBOX_WORKERS,
    device: DeviceOpt = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: <root>/runs/eval/...).")
    ] = None,
    threads: ThreadsOpt = None,
    batch_size: BatchSizeOpt = "auto",
    no_isolation: NoIsolationOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate with the training prompt, score in the sandbox, write results.json.

    Under `torchrun --nproc-per-node N -m weighted_mtp eval run ...` the tasks are dealt
    out to the N ranks and rank 0 writes the same samples.jsonl as one process.
    """
    from weighted_mtp.eval.generate import SamplingConfig, check_batch_size, check_device
    from weighted_mtp.eval.problems import require_tests
    from weighted_mtp.eval.run import RunSettings, run_evaluation

    dataset = checked_name(dataset, DATASETS, "dataset")
    rows = check_batch_size(batch_size)
    settings = RunSettings(
        dataset=dataset,
        sampling=SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        ),
        n=samples,
        speculative=speculative,
        draft_heads=draft_heads,
        limit=limit,
        split=split or "",
        tests=require_tests(dataset, tests),
        workers=workers,
        isolation=_isolation(no_isolation),
    )
    first_rank = int(os.environ.get("RANK", "0")) == 0
    with progress_bars(not as_json and first_rank):
        results = run_evaluation(
            state(ctx).layout,
            model,
            settings,
            out,
            device=check_device(device),
            threads=threads,
            batch_size=rows,
        )
    if results is None:  # another rank than the first under torchrun: rank 0 reports
        return
    if as_json:
        print_json(results.to_json())
        return
    title = f"{model} on {dataset}: {results.n_samples} samples of {results.n_tasks} tasks"
    print_scores(
        title, results.pass_at_k, results.results, results.plus_pass_at_k, results.plus_results
    )
    gen = results.generation
    rate = gen.acceptance_rate
    console.print(
        f"generation: {gen.new_tokens} tokens, {gen.tokens_per_second:.1f} tokens/s "
        f"on {gen.device} ({gen.dtype}, {gen.ranks} rank(s)), "
        f"batch {gen.batch_size} ({gen.batch_size_reason})"
        + (f", draft acceptance {rate:.1%}" if rate is not None else ""),
        highlight=False,
    )
    if results.prompts_cut:
        cut = ", ".join(p.task_id for p in results.prompts_cut)
        console.print(
            f"prompts cut to fit the {results.context}-token context: {cut}", highlight=False
        )
    console.print(f"written: {results.samples} and results.json", highlight=False)


@app.command()
def compare(
    ctx: typer.Context,
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Two or more finished training runs or storage models, as `eval run` takes "
            "them; the first is the Baseline the others are compared with.",
            show_default=False,
        ),
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Datasets, comma-separated.")
    ] = ",".join(COMPARE_DATASETS),
    samples: SamplesOpt = defaults.SAMPLES_PER_TASK,
    temperature: TemperatureOpt = defaults.TEMPERATURE,
    top_p: TopPOpt = defaults.TOP_P,
    max_new_tokens: MaxNewTokensOpt = defaults.MAX_NEW_TOKENS,
    speculative: SpeculativeOpt = False,
    draft_heads: DraftHeadsOpt = None,
    limit: LimitOpt = None,
    seed: Annotated[int, typer.Option(help="Sampling and bootstrap seed.")] = 0,
    k: Annotated[
        str | None,
        typer.Option("--k", help="pass@k for these k (default: those of 1,10,100 up to -n)."),
    ] = None,
    resamples: Annotated[
        int, typer.Option(help="Bootstrap resamples of the tasks.")
    ] = defaults.BOOTSTRAP_RESAMPLES,
    confidence: Annotated[
        float, typer.Option(help="Interval level (stricter when reading several together).")
    ] = defaults.CONFIDENCE,
    reuse: Annotated[
        bool,
        typer.Option(
            help="Read a run's finished evaluation (eval run's, or an earlier comparison's) "
            "where its weights, data and settings match, instead of evaluating again."
        ),
    ] = True,
    workers: WorkersOpt = defaults.SANDBOX_WORKERS,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: <root>/runs/compare/<stamp>)."),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    batch_size: BatchSizeOpt = "auto",
    no_isolation: NoIsolationOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """pass@k of each run with bootstrap intervals over tasks, and each run against the
    first: the difference with a paired bootstrap interval (McNemar's exact test with -n 1);
    writes comparison.md, comparison.json and pass_at_k.png (docs/evaluation-compare.md)."""
    from weighted_mtp.eval.compare import (
        ComparedRun,
        CompareSettings,
        compare_runs,
        comparison_folder,
        default_ks,
    )
    from weighted_mtp.eval.generate import SamplingConfig, check_batch_size
    from weighted_mtp.eval.run import RunSettings
    from weighted_mtp.eval.scoring import parse_ks

    rows = check_batch_size(batch_size)
    datasets = tuple(name.strip() for name in dataset.split(","))
    generation = RunSettings(
        dataset=datasets[0],
        sampling=SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        ),
        n=samples,
        speculative=speculative,
        draft_heads=draft_heads,
        limit=limit,
        workers=workers,
        isolation=_isolation(no_isolation),
    )
    ks = default_ks(samples) if k is None else parse_ks(k)
    settings = CompareSettings(datasets, ks, generation, resamples, confidence)
    layout = state(ctx).layout
    folder = comparison_folder(layout, out)
    with progress_bars(not as_json):
        comparison = compare_runs(
            layout,
            [ComparedRun(name, name) for name in runs],
            settings,
            folder,
            reuse=reuse,
            device=device,
            threads=threads,
            batch_size=rows,
            on_evaluation=None if as_json else _say_evaluation,
        )
    if comparison is None:  # a torchrun rank that generated its share; rank 0 reports
        return
    if as_json:
        print_json({"folder": str(folder.root), **comparison.record().to_json()})
        return
    print_comparison(comparison)
    console.print(f"written: {folder.markdown}, {folder.json.name}, {folder.figure.name}")


def _say_evaluation(run: ComparedRun, dataset: str, evaluation: Evaluation | None) -> None:
    if evaluation is None:
        progress.logger.info(f"evaluating {run.label} on {dataset}")
    else:
        progress.logger.info(f"{run.label} on {dataset}: reusing {evaluation.folder}")


def print_comparison(comparison: Comparison) -> None:
    from rich.table import Table

    labels = comparison.labels
    level = comparison.settings.level
    for d in comparison.datasets:
        plus = d.plus
        table = Table(
            "run",
            *(f"pass@{k}" for k in d.pass_at_k),
            *(f"pass@{k} plus" for k in (plus.pass_at_k if plus else ())),
            *(f"Δ pass@{k} [{level}]" for k in d.differences),
            *(["McNemar p"] if d.mcnemar is not None else []),
            box=None,
            title=f"{d.dataset}: {len(d.tasks)} tasks",
            title_justify="left",
        )
        for i, label in enumerate(labels):
            scores = [f"{d.pass_at_k[k][i].estimate:.4f}" for k in d.pass_at_k]
            scores += (
                [f"{plus.pass_at_k[k][i].estimate:.4f}" for k in plus.pass_at_k] if plus else []
            )
            if i == 0:
                table.add_row(label + " (Baseline)", *scores)
                continue
            deltas = [
                f"{x.estimate:+.4f} [{x.low:+.4f}, {x.high:+.4f}]"
                for x in (d.differences[k][i - 1] for k in d.differences)
            ]
            tests = [] if d.mcnemar is None else [f"{d.mcnemar[i - 1].p_value:.4g}"]
            table.add_row(label, *scores, *deltas, *tests)
        console.print(table)
