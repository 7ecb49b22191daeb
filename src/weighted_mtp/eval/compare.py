"""`wmtp eval compare`: pass@k of several models on the same tasks, and whether their
differences are more than noise.

Each run (a finished training run or a storage model; the first is the Baseline) is
evaluated on each dataset with the same settings, or its finished evaluation is read where
one matches them exactly (`run.evaluation_key`: the weights' and the data files' SHA-256 and
every setting that changes a sample). From the per-sample verdicts: each run's pass@k with a
percentile bootstrap interval over tasks; each run against the Baseline, the difference with
a paired bootstrap interval (the same resample of task ids for both, seeded) and, with one
sample per task, McNemar's exact test. Written into a comparison folder
(`layout.ComparisonFolder`): comparison.json (the same verdicts give the same bytes),
comparison.md and pass_at_k.png; comparison.json last, as the mark of a finished one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from weighted_mtp import __version__, assets
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval import defaults
from weighted_mtp.eval.passk import mean_pass_at_k
from weighted_mtp.eval.problems import SplitProblems
from weighted_mtp.eval.ranks import torchrun_ranks
from weighted_mtp.eval.result_files import (
    BootstrapRecord,
    ComparedRunRecord,
    CompareSettingsRecord,
    ComparisonRecord,
    DatasetComparisonRecord,
    DifferenceRecord,
    EvaluationResults,
    EvaluationSource,
    GenerationSettingsRecord,
    IntervalRecord,
    McNemarRecord,
    VersusBaseline,
    read_record,
)
from weighted_mtp.eval.run import (
    PASS_AT,
    RunSettings,
    evaluation_key,
    run_evaluation,
    settings_benchmark,
    speculative_plan,
)
from weighted_mtp.eval.sandbox.pool import UNCONFINED
from weighted_mtp.eval.scoring import results_path
from weighted_mtp.eval.statistics import (
    Interval,
    McNemar,
    against_first,
    mcnemar_exact,
    task_pass_at_k,
)
from weighted_mtp.storage.atomic import write_json, write_text
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.jsonl import iter_jsonl
from weighted_mtp.storage.layout import ComparisonFolder, Layout, RunFolder

DIGITS = 6  # decimals of the estimates and interval ends in comparison.json
MIN_RESAMPLES = 1000  # fewer leave the 2.5% tails to a handful of draws


@dataclass(frozen=True)
class ComparedRun:
    """`name` as `wmtp eval run` takes it (a storage model, a run folder or a run id);
    `label` how the comparison names it."""

    name: str
    label: str


@dataclass(frozen=True)
class CompareSettings:
    """`generation` is every evaluation's sampling (its dataset and split are set per
    dataset: each dataset's evaluation split); the bootstrap is seeded by its seed."""

    datasets: tuple[str, ...]
    ks: tuple[int, ...]
    generation: RunSettings
    resamples: int = defaults.BOOTSTRAP_RESAMPLES
    confidence: float = defaults.CONFIDENCE

    def run_settings(self, dataset: str) -> RunSettings:
        return self.generation.for_dataset(dataset)

    @property
    def level(self) -> str:
        """The intervals' level as people write it ("95%")."""
        return f"{self.confidence * 100:g}%"

    @property
    def paired_verdicts(self) -> bool:
        """One sample per task: a pass/fail pair per task, for McNemar's test."""
        return self.generation.n == 1

    def check(self) -> None:
        """Every setting sound, before anything is evaluated."""
        unknown = [d for d in self.datasets if d not in assets.DATASETS]
        if not self.datasets or unknown or len(set(self.datasets)) < len(self.datasets):
            raise UsageError(
                f"--dataset {','.join(self.datasets)!r} is not a list of distinct datasets",
                hint=f"choose from {', '.join(assets.DATASETS)}",
            )
        too_large = [k for k in self.ks if k > self.generation.n]
        if not self.ks or self.ks[0] < 1 or too_large:
            raise UsageError(
                f"--k {','.join(map(str, self.ks))}: pass@k needs 1 <= k <= samples per task "
                f"({self.generation.n})",
                hint=f"raise -n to at least {max(self.ks, default=1)} or drop the larger k",
            )
        if self.resamples < MIN_RESAMPLES:
            raise UsageError(
                f"--resamples {self.resamples} is too few for a 95% interval's tails",
                hint=f"use at least {MIN_RESAMPLES} (default {defaults.BOOTSTRAP_RESAMPLES})",
            )
        if not 0 < self.confidence < 1:
            raise UsageError(f"confidence {self.confidence} is not in (0, 1)")


def default_ks(n: int) -> tuple[int, ...]:
    """The k of pass@k reported when none are asked for: `eval run`'s, up to n."""
    return tuple(k for k in PASS_AT if k <= n)


def comparison_folder(layout: Layout, out: Path | None) -> ComparisonFolder:
    """`out`, or a new stamped folder under the storage's comparisons folder."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return ComparisonFolder(out if out is not None else layout.comparisons_dir / stamp)


@dataclass(frozen=True)
class Evaluation:
    """One run's finished evaluation of one dataset: its folder, the SHA-256 of its samples
    and of its per-sample verdicts, and the verdicts, per task in the dataset's order."""

    folder: Path
    samples_sha256: str
    verdicts_sha256: str
    verdicts: dict[str, list[bool]]
    reused: bool
    plus_verdicts: dict[str, list[bool]] | None = None  # by the plus tests too (None: none)

    def counts(self, tasks: Sequence[str], plus: bool = False) -> list[tuple[int, int]]:
        """(samples, passed) of each task, in the order of `tasks` (`plus`: passed the plus
        tests too)."""
        verdicts = self.plus_verdicts if plus and self.plus_verdicts is not None else self.verdicts
        return [(len(verdicts[t]), sum(verdicts[t])) for t in tasks]


@dataclass(frozen=True)
class DatasetComparison:
    """Every run on one dataset: pass@k per k and run, the difference against the Baseline
    per k and other run, McNemar's test per other run (one sample per task only)."""

    dataset: str
    split: str
    tasks: list[str]
    evaluations: list[Evaluation]
    pass_at_k: dict[int, list[Interval]]
    differences: dict[int, list[Interval]]
    mcnemar: list[McNemar] | None
    plus: PlusComparison | None = None  # with the plus tests too, where every run has them


@dataclass(frozen=True)
class PlusComparison:
    """pass@k by the plus tests too, per k and run, and the differences against the
    Baseline per k and other run."""

    pass_at_k: dict[int, list[Interval]]
    differences: dict[int, list[Interval]]


@dataclass(frozen=True)
class Comparison:
    """`weights` is each run's weights' SHA-256 (or its adapter's and its base's); `folder`
    where the comparison is written (evaluations inside it are named relative to it)."""

    runs: list[ComparedRun]
    weights: list[dict[str, str]]
    settings: CompareSettings
    datasets: list[DatasetComparison]
    folder: ComparisonFolder

    @property
    def labels(self) -> list[str]:
        return [run.label for run in self.runs]

    def record(self) -> ComparisonRecord:
        """comparison.json."""
        settings = self.settings
        generation = settings.generation.record()
        return ComparisonRecord(
            baseline=self.labels[0],
            runs=[
                ComparedRunRecord(name=run.name, label=run.label, **weights)
                for run, weights in zip(self.runs, self.weights, strict=True)
            ],
            settings=CompareSettingsRecord(
                datasets=list(settings.datasets),
                ks=list(settings.ks),
                generation=GenerationSettingsRecord.of(generation),
                bootstrap=BootstrapRecord(
                    resamples=settings.resamples,
                    confidence=settings.confidence,
                    seed=generation.seed,
                    method="percentile; task ids resampled with replacement, the same "
                    "resample for every run",
                ),
                test="McNemar exact (two-sided binomial on the discordant tasks)"
                if settings.paired_verdicts
                else None,
            ),
            datasets={d.dataset: self._dataset_record(d) for d in self.datasets},
            tool_version=__version__,
        )

    def _dataset_record(self, d: DatasetComparison) -> DatasetComparisonRecord:
        labels = self.labels
        versus = {
            label: VersusBaseline(
                pass_at_k={
                    f"pass@{k}": DifferenceRecord(
                        *_rounded(d.differences[k][i]), d.differences[k][i].excludes_zero
                    )
                    for k in d.differences
                },
                mcnemar=None if d.mcnemar is None else McNemarRecord(**asdict(d.mcnemar[i])),
            )
            for i, label in enumerate(labels[1:])
        }
        return DatasetComparisonRecord(
            split=d.split,
            n_tasks=len(d.tasks),
            evaluations={
                label: EvaluationSource(
                    folder=self.folder.name(e.folder),
                    samples_sha256=e.samples_sha256,
                    verdicts_sha256=e.verdicts_sha256,
                )
                for label, e in zip(labels, d.evaluations, strict=True)
            },
            pass_at_k={
                f"pass@{k}": {
                    label: IntervalRecord(*_rounded(interval))
                    for label, interval in zip(labels, intervals, strict=True)
                }
                for k, intervals in d.pass_at_k.items()
            },
            versus_baseline=versus,
            plus_pass_at_k=None
            if d.plus is None
            else {
                f"pass@{k}": {
                    label: IntervalRecord(*_rounded(interval))
                    for label, interval in zip(labels, intervals, strict=True)
                }
                for k, intervals in d.plus.pass_at_k.items()
            },
            plus_versus_baseline=None
            if d.plus is None
            else {
                label: {
                    f"pass@{k}": DifferenceRecord(*_rounded(diffs[i]), diffs[i].excludes_zero)
                    for k, diffs in d.plus.differences.items()
                }
                for i, label in enumerate(labels[1:])
            },
        )


def _rounded(interval: Interval) -> tuple[float, float, float]:
    """An interval's estimate and ends to `DIGITS` decimals."""
    return (
        round(interval.estimate, DIGITS),
        round(interval.low, DIGITS),
        round(interval.high, DIGITS),
    )


# ------------------------------------------------------------------ gathering verdicts


def read_verdicts(
    folder: Path, n_tasks: int, recorded: dict[str, float | None], n: int, key: str = "passed"
) -> dict[str, list[bool]]:
    """Each task's verdicts (the per-sample results' `key`: "passed", or "plus_passed" for
    the plus tests) from the per-sample results beside an evaluation's samples, checked
    against what its results.json recorded (`n_tasks` and pass@k): every task has `n`
    samples and the pass@k recomputed from the verdicts is the one recorded."""
    path = results_path(RunFolder(folder).samples)
    if not path.is_file():
        raise WmtpError("the evaluation has no per-sample results", path=path)
    verdicts: dict[str, list[bool]] = {}
    for line, row in iter_jsonl(path):
        task, passed = row.get("task_id"), row.get(key)
        if not isinstance(task, str) or not isinstance(passed, bool):
            raise WmtpError(f"line {line}: no task_id string and {key} verdict", path=path)
        verdicts.setdefault(task, []).append(passed)
    counts = [(len(v), sum(v)) for v in verdicts.values()]
    recomputed = {
        name: mean_pass_at_k(counts, int(name.removeprefix("pass@"))) for name in recorded
    }
    if (
        len(verdicts) != n_tasks
        or any(samples != n for samples, _ in counts)
        or any(
            mine != theirs if mine is None or theirs is None else abs(mine - theirs) > 1e-9
            for mine, theirs in ((recomputed[k], recorded[k]) for k in recorded)
        )
    ):
        raise WmtpError(
            f"the per-sample results do not match results.json ({len(verdicts)} tasks, "
            f"{n} samples each expected)",
            path=path,
            hint="evaluate the run again (the folder was changed after it was written)",
        )
    return verdicts


def _evaluation(folder: Path, n: int, reused: bool) -> Evaluation:
    results = read_record(EvaluationResults, RunFolder(folder).results)
    verdicts = read_verdicts(folder, results.n_tasks, results.pass_at_k, n)
    plus = results.plus_pass_at_k
    plus_verdicts = (
        None if plus is None else read_verdicts(folder, results.n_tasks, plus, n, "plus_passed")
    )
    samples = RunFolder(folder).samples
    return Evaluation(
        folder,
        sha256_file(samples),
        sha256_file(results_path(samples)),
        verdicts,
        reused,
        plus_verdicts,
    )


def finished_evaluations(layout: Layout) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, evaluation key) of every complete evaluation under the runs folder."""
    found = []
    for path in layout.evaluation_results():
        if not layout.run(assets.EVAL_RESULTS, path.parent).complete:
            continue
        try:
            key = read_record(EvaluationResults, path).evaluation_key()
        except WmtpError:
            continue  # not a results file this version can read: not a match
        found.append((path.parent, key))
    return found


def require_evaluable(layout: Layout, settings: CompareSettings) -> None:
    """Every dataset has what an evaluation reads, or one line (before hours of work)."""
    settings.check()
    for dataset in settings.datasets:
        settings_benchmark(layout, settings.run_settings(dataset))


# ------------------------------------------------------------------ comparing


def compare_dataset(
    dataset: str, evaluations: list[Evaluation], settings: CompareSettings, split: str
) -> DatasetComparison:
    """pass@k, differences and McNemar's test on one dataset, over the Baseline's tasks."""
    tasks = list(evaluations[0].verdicts)
    for evaluation in evaluations[1:]:
        if set(evaluation.verdicts) != set(tasks):
            raise WmtpError(
                f"the evaluations of {dataset} hold different tasks",
                path=evaluation.folder,
                hint="compare evaluations made with the same --limit and split",
            )
    seed, resamples = settings.generation.sampling.seed, settings.resamples
    level = settings.confidence
    pass_at_k: dict[int, list[Interval]] = {}
    differences: dict[int, list[Interval]] = {}
    for k in settings.ks:
        per_run = [task_pass_at_k(e.counts(tasks), k) for e in evaluations]  # each [tasks]
        found = against_first(np.stack(per_run), resamples, seed, level)  # [runs, tasks]
        pass_at_k[k], differences[k] = found.means, found.differences
    plus = None
    if all(e.plus_verdicts is not None for e in evaluations):
        plus = PlusComparison({}, {})
        for k in settings.ks:
            per_run = [task_pass_at_k(e.counts(tasks, plus=True), k) for e in evaluations]
            found = against_first(np.stack(per_run), resamples, seed, level)
            plus.pass_at_k[k], plus.differences[k] = found.means, found.differences
    mcnemar = None
    if settings.paired_verdicts:
        first = [evaluations[0].verdicts[t][0] for t in tasks]
        mcnemar = [mcnemar_exact(first, [e.verdicts[t][0] for t in tasks]) for e in evaluations[1:]]
    return DatasetComparison(
        dataset, split, tasks, evaluations, pass_at_k, differences, mcnemar, plus
    )


def _prepare(
    layout: Layout,
    runs: Sequence[ComparedRun],
    settings: CompareSettings,
    folder: ComparisonFolder | None,
) -> tuple[dict[str, SplitProblems], dict[tuple[int, str], dict[str, Any]]]:
    """Check everything a comparison needs before any evaluation (`folder`: where it will
    be written, None on a rank that writes nothing); each dataset's benchmark, read once for
    every run, and each (run, dataset)'s evaluation key."""
    settings.check()
    if len(runs) < 2:
        raise UsageError("a comparison needs at least two runs (the first is the Baseline)")
    labels = [run.label for run in runs]
    if len(set(labels)) < len(labels):
        raise UsageError(f"runs are named twice: {', '.join(labels)}")
    if folder is not None and folder.root.exists() and any(folder.root.iterdir()):
        raise UsageError("output folder is not empty", path=folder.root, hint="choose a new --out")
    for run in runs:  # --speculative and --draft-heads against each model's heads
        speculative_plan(layout, run.name, settings.generation)
    benchmarks = {
        dataset: settings_benchmark(layout, settings.run_settings(dataset))
        for dataset in settings.datasets
    }
    keys = {
        (i, dataset): evaluation_key(
            layout, run.name, settings.run_settings(dataset), benchmarks[dataset]
        )
        for i, run in enumerate(runs)
        for dataset in settings.datasets
    }
    return benchmarks, keys


def compare_runs(
    layout: Layout,
    runs: Sequence[ComparedRun],
    settings: CompareSettings,
    folder: ComparisonFolder,
    *,
    reuse: bool = True,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    on_evaluation: Callable[[ComparedRun, str, Evaluation | None], None] | None = None,
) -> Comparison | None:
    """Evaluate each run on each dataset (or read a matching finished evaluation when
    `reuse`), compare them with the first, and write the comparison into `folder`.
    `on_evaluation(run, dataset, evaluation)` is told before each evaluation is made (None)
    and when one is reused. Under torchrun every rank generates its share of each
    evaluation (`run_evaluation`) and rank 0 alone scores, compares, writes and returns;
    the other ranks return None. `batch_size`: the rows decoded together (None: auto)."""
    first = torchrun_ranks().is_first
    benchmarks, keys = _prepare(layout, runs, settings, folder if first else None)
    finished = finished_evaluations(layout) if reuse else []
    datasets = []
    for dataset in settings.datasets:
        run_settings = settings.run_settings(dataset)
        evaluations = []
        for i, run in enumerate(runs):
            match = next((f for f, key in finished if key == keys[i, dataset]), None)
            if match is None:
                if on_evaluation is not None and first:
                    on_evaluation(run, dataset, None)
                out = folder.evaluation(i + 1, run.label, dataset)
                run_evaluation(
                    layout,
                    run.name,
                    run_settings,
                    out,
                    device,
                    threads,
                    benchmarks[dataset],
                    batch_size,
                )
                finished.append((out, keys[i, dataset]))  # the same weights named twice
                if first:
                    evaluations.append(_evaluation(out, run_settings.n, reused=False))
            elif first:
                evaluations.append(_evaluation(match, run_settings.n, reused=True))
                if on_evaluation is not None:
                    on_evaluation(run, dataset, evaluations[-1])
        if first:
            datasets.append(compare_dataset(dataset, evaluations, settings, run_settings.split))
    if not first:
        return None
    weights = [keys[i, settings.datasets[0]]["weights"] for i in range(len(runs))]
    comparison = Comparison(list(runs), weights, settings, datasets, folder)
    write_comparison(comparison)
    return comparison


def write_comparison(comparison: Comparison) -> None:
    """The figure and comparison.md, then comparison.json (what marks the folder done)."""
    from weighted_mtp.eval.compare_figure import plot_comparison

    folder = comparison.folder
    plot_comparison(comparison, folder.figure)
    write_text(folder.markdown, comparison_markdown(comparison))
    write_json(folder.json, comparison.record().to_json())


# ------------------------------------------------------------------ comparison.md


def _value(interval: Interval, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{interval.estimate:{sign}.4f} [{interval.low:{sign}.4f}, {interval.high:{sign}.4f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _dataset_markdown(
    d: DatasetComparison, labels: list[str], level: str, folder: ComparisonFolder
) -> str:
    ks = list(d.pass_at_k)
    scores = _table(
        ["run", *(f"pass@{k} [{level} CI]" for k in ks)],
        [[label, *(_value(d.pass_at_k[k][i]) for k in ks)] for i, label in enumerate(labels)],
    )
    header = ["run", *(f"Δ pass@{k} [{level} CI]" for k in ks)]
    if d.mcnemar is not None:
        header.append("McNemar: Baseline only / run only, p")
    rows = []
    for i, label in enumerate(labels[1:]):
        cells = [
            _value(d.differences[k][i], signed=True)
            + (" **" if d.differences[k][i].excludes_zero else "")
            for k in ks
        ]
        if d.mcnemar is not None:
            test = d.mcnemar[i]
            cells.append(f"{test.baseline_only} / {test.other_only}, p = {test.p_value:.4g}")
        rows.append([label, *cells])
    sources = "\n".join(
        f"- {label}: `{folder.name(e.folder)}`" + (" (reused)" if e.reused else "")
        for label, e in zip(labels, d.evaluations, strict=True)
    )
    plus = ""
    if d.plus is not None:
        both = _table(
            ["run", *(f"pass@{k} base / plus [{level} CI]" for k in ks)],
            [
                [
                    label,
                    *(
                        f"{_value(d.pass_at_k[k][i])} / {_value(d.plus.pass_at_k[k][i])}"
                        for k in ks
                    ),
                ]
                for i, label in enumerate(labels)
            ],
        )
        deltas = _table(
            ["run", *(f"Δ pass@{k} plus [{level} CI]" for k in ks)],
            [
                [
                    label,
                    *(
                        _value(d.plus.differences[k][i], signed=True)
                        + (" **" if d.plus.differences[k][i].excludes_zero else "")
                        for k in ks
                    ),
                ]
                for i, label in enumerate(labels[1:])
            ],
        )
        plus = (
            "Base and plus tests side by side (a sample passes plus when it passes the "
            f"base tests and the plus tests):\n\n{both}\n\n"
            f"Against the Baseline, with the plus tests:\n\n{deltas}\n\n"
        )
    return (
        f"## {d.dataset} ({d.split} split, {len(d.tasks)} tasks)\n\n{scores}\n\n"
        f"Against the Baseline ({labels[0]}):\n\n{_table(header, rows)}\n\n"
        f"{plus}Evaluations:\n\n{sources}\n"
    )


def _decoding(generation: RunSettings) -> str:
    if not generation.speculative:
        return "plain"
    if generation.draft_heads is None:
        return "self-speculative"
    return f"self-speculative ({generation.draft_heads} drafts per pass)"


def comparison_markdown(comparison: Comparison) -> str:
    settings = comparison.settings
    generation = settings.generation
    sampling = generation.sampling
    level = settings.level
    text = resources.files(__package__).joinpath("templates", "comparison.md").read_text("utf-8")
    if not generation.isolation:  # every evaluation in it ran so (the reuse key says)
        text = f"**{UNCONFINED}**\n\n" + text
    return Template(text).substitute(
        runs=", ".join(comparison.labels),
        baseline=comparison.labels[0],
        samples="one sample" if generation.n == 1 else f"{generation.n} samples",
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        decoding=_decoding(generation),
        limit="all tasks" if generation.limit is None else f"the first {generation.limit} tasks",
        seed=sampling.seed,
        resamples=settings.resamples,
        level=level,
        mcnemar=" McNemar's exact test asks whether the tasks only one of the two runs "
        "passes split more unevenly than chance (p below 0.05: more than noise)."
        if settings.paired_verdicts
        else "",
        datasets="\n".join(
            _dataset_markdown(d, comparison.labels, level, comparison.folder)
            for d in comparison.datasets
        ),
        figure=comparison.folder.figure.name,
    )
