"""`wmtp eval run`: a benchmark's tasks, generation, scoring, results.json.

The tasks are a split of the benchmark's raw records, whole (`eval.problems`), and each
prompt is the task's training prompt (the Alpaca template the model was trained on,
`weighted_mtp.assets.prompt_template`), so the completion is what a training response is:
HumanEval's function body, MBPP's and CodeContests' whole program. A prompt longer than
the model's context leaves for the completion is cut at its head (`eval.prompts`), and
results.json names those tasks. Where a completion stops and which split is read by
default are facts of the dataset's benchmark module (`weighted_mtp.assets.benchmarks`).

What is evaluated is a storage model, or a finished training run's `final/` model (a run
folder, `<experiment>/<run-id>` or a run id under the storage's runs folder); results.json
records which, with the SHA-256 of the weights and the run's identity, and the device and
dtype it generated in. Under torchrun the tasks are dealt out to the ranks (`eval.ranks`)
and rank 0 writes the same samples.jsonl one process would: each sample's random draws
depend only on (seed, task, sample index), never on the rank or the batch beside it.

The path goes one way: the benchmark is read once (its tasks, prompts and tests, its raw
files hashed as they are read), samples.jsonl is written once, and the samples go to
scoring as they are in memory; results.json is an `EvaluationResults` record
(`eval.result_files`, whose schema docs/schemas/ publishes).

Every setting is checked when `RunSettings` is made and the model, device and output
folder before any weights load: a bad value is one line, not a traceback minutes later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import __version__, assets, progress
from weighted_mtp.assets.benchmark import TestChoice
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import UsageError
from weighted_mtp.eval import defaults, result_files
from weighted_mtp.eval.generate import (
    BatchPlan,
    Continuation,
    DecodeStats,
    LoadedModel,
    PromptSamples,
    SamplingConfig,
    check_device,
    context_length,
    generate,
    generation_dtype,
    generation_folder,
    load_for_generation,
    load_run_for_generation,
    pack_for_decoding,
    plan_batch,
    resolve_device,
    sample_seed,
)
from weighted_mtp.eval.problems import SplitProblems, choose_benchmark, load_split
from weighted_mtp.eval.prompts import FittedPrompt, fit_prompt
from weighted_mtp.eval.ranks import Ranks, gather, torchrun_ranks, undeal
from weighted_mtp.eval.result_files import (
    BaseModelRecord,
    CutPrompt,
    DatasetRecord,
    EvaluationResults,
    GenerationRecord,
    ModelRecord,
    SettingsRecord,
    TrainingRunRecord,
)
from weighted_mtp.eval.sandbox.pool import SandboxLimits, unconfined_warning
from weighted_mtp.eval.scoring import (
    Sample,
    SamplesFile,
    ScoreOptions,
    require_writable,
    score_generated,
)
from weighted_mtp.storage.atomic import atomic_write, read_json, write_json
from weighted_mtp.storage.finished_runs import ADAPTER_WEIGHTS, FinishedRun, find_run, finished_run
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths

PASS_AT = (1, 10, 100)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What to generate and how to score it, built by keyword. `sampling` holds the
    sampling settings once (its seed the run's; its stop sequences are the dataset's, set
    when made); `split` "" means the dataset's evaluation split. Checked when made: a bad
    value is one `UsageError`."""

    dataset: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    n: int = defaults.SAMPLES_PER_TASK
    speculative: bool = False
    draft_heads: int | None = None  # speculative: drafts per pass (None: the model's default)
    limit: int | None = None
    split: str = ""
    tests: TestChoice = "base"
    workers: int = defaults.SANDBOX_WORKERS
    isolation: bool = True  # False: --no-isolation (not root, no user namespaces)

    def __post_init__(self) -> None:
        choice = choose_benchmark(self.dataset, self.split, self.tests)
        object.__setattr__(self, "split", choice.split)
        object.__setattr__(self, "tests", choice.tests)
        object.__setattr__(
            self, "sampling", dataclasses.replace(self.sampling, stop=choice.stop_sequences)
        )
        sampling = self.sampling
        for name, value, low in (
            ("-n/--samples", self.n, 1),
            ("--max-new-tokens", sampling.max_new_tokens, 1),
            ("--limit", self.limit, 1),
            ("--workers", self.workers, 1),
            ("--seed", sampling.seed, 0),
            ("--draft-heads", self.draft_heads, 1),
        ):
            if value is not None and value < low:
                raise UsageError(f"{name} must be at least {low}, not {value}")
        if self.draft_heads is not None and not self.speculative:
            raise UsageError("--draft-heads needs --speculative")
        if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
            raise UsageError(
                f"--temperature must be a finite number >= 0, not {sampling.temperature}",
                hint="0 decodes greedily",
            )
        if not (math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1):
            raise UsageError(f"--top-p must be in (0, 1], not {sampling.top_p}")

    def task_sampling(self, task_id: str) -> SamplingConfig:
        """The sampling of one task: its seed a function of the run's seed and the task."""
        return dataclasses.replace(self.sampling, seed=sample_seed(self.sampling.seed, task_id))

    def for_dataset(self, dataset: str) -> RunSettings:
        """The same settings on another dataset, on its evaluation split."""
        return dataclasses.replace(self, dataset=dataset, split="")

    def record(self) -> SettingsRecord:
        """The settings as results.json records them (flat, as the command line names them)."""
        sampling = self.sampling
        return SettingsRecord(
            dataset=self.dataset,
            n=self.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            speculative=self.speculative,
            limit=self.limit,
            seed=sampling.seed,
            split=self.split,
            workers=self.workers,
            tests=self.tests,
            draft_heads=self.draft_heads,
            isolation=self.isolation,
        )


def evaluated_model(layout: Layout, name: str) -> str | FinishedRun:
    """`wmtp eval run NAME`: a storage model's name, or the finished training run NAME
    names (a folder, `<experiment>/<run-id>`, or a run id under the runs folder)."""
    if name in MODELS:
        return name
    folder = find_run(layout, name)
    if folder is None:
        raise UsageError(
            f"{name!r} is neither a storage model nor a training run",
            hint=f"use one of {', '.join(MODELS)}, a run folder, or <experiment>/<run-id> "
            f"under {layout.runs_dir}",
        )
    return finished_run(layout, name, folder)


def _label(model: str | FinishedRun) -> str:
    """The folder name of a model's results under the eval runs folder."""
    if isinstance(model, str):
        return model
    return f"{model.experiment}-{model.paths.root.name}"


def default_out_dir(layout: Layout, model: str | FinishedRun, settings: RunSettings) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = "-speculative" if settings.speculative else ""
    return layout.eval_runs_dir / _label(model) / f"{settings.dataset}-{stamp}{mode}"


def require_room(settings: RunSettings, context: int, model: str) -> None:
    """BOS, at least one prompt token and `max_new_tokens` fit the model's context."""
    max_new_tokens = settings.sampling.max_new_tokens
    if max_new_tokens > context - 2:
        raise UsageError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in "
            f"{model}'s {context}-token context",
            hint=f"use at most {context - 2} (prompts longer than what is left are cut)",
        )


def speculative_plan(layout: Layout, name: str, settings: RunSettings) -> int | None:
    """With --speculative, the draft heads the model `name` (a storage model or a run)
    decodes with, from its configs alone; None without. Lets `eval compare` check every run
    before it evaluates any."""
    return planned_draft_heads(
        settings, generation_folder(layout, evaluated_model(layout, name)), name
    )


def planned_draft_heads(settings: RunSettings, folder: ModelPaths, model: str) -> int | None:
    """With --speculative, the draft heads per pass: --draft-heads checked against the
    model's heads, or the default for its shape, read from params.json before any weights
    load. None without --speculative."""
    if not settings.speculative:
        return None
    if not folder.params.is_file():
        raise UsageError(
            f"--speculative needs a model with MTP heads; {model!r} is a Hugging Face model",
            hint="decode it without --speculative",
        )
    from weighted_mtp.eval.speculative import draft_heads_for
    from weighted_mtp.models.architecture import MetaParams

    return draft_heads_for(MetaParams.from_file(folder.params), settings.draft_heads)


def require_new_folder(out: Path) -> None:
    """`out` is absent or an empty folder this process can write in."""
    if out.exists() and not out.is_dir():
        raise UsageError("--out is not a folder", path=out, hint="choose a new --out")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError("output folder is not empty", path=out, hint="choose a new --out")
    require_writable(out / assets.SUMMARY_FILE, "evaluation's results")


def fitted_prompts(
    benchmark: SplitProblems, tokenizer_model: Path, budget: int
) -> list[FittedPrompt]:
    """Each selected task's prompt within `budget` tokens of the model's tokenizer."""
    from weighted_mtp.models.tokenizer import load_sentencepiece

    tokenizer = load_sentencepiece(tokenizer_model)

    def count(text: str) -> int:
        return 1 + len(tokenizer.encode(text))  # BOS + the text

    return [
        fit_prompt(task_id, parts, count, budget) for task_id, parts in benchmark.prompts.items()
    ]


@dataclass(frozen=True)
class TaskSamples:
    task_id: str
    samples: list[Continuation]


@dataclass(frozen=True)
class Generated:
    """One rank's (or, summed, every rank's) samples of its tasks, in order."""

    tasks: list[TaskSamples]
    stats: DecodeStats
    batch: BatchPlan | None  # None: --speculative, one row at a time


def generate_tasks(
    loaded: LoadedModel,
    prompts: list[FittedPrompt],
    settings: RunSettings,
    batch_size: int | None = None,
) -> Generated:
    """`settings.n` samples of each prompt, in order: continuous batching of up to
    `batch_size` rows (None: `auto`) across tasks and samples (`generate`), or with
    --speculative one sample at a time."""
    with progress.task("generating", len(prompts) * settings.n, "samples") as advance:
        if settings.speculative:
            return _speculative_tasks(loaded, prompts, settings, advance)
        requests = [
            PromptSamples(
                loaded.encode_prompt(p.text), settings.n, settings.task_sampling(p.task_id).seed
            )
            for p in prompts
        ]
        positions = (
            max((len(r.ids) for r in requests), default=0) + settings.sampling.max_new_tokens
        )
        plan = plan_batch(loaded, batch_size, len(requests) * settings.n, positions)
        samples, stats = generate(
            loaded, requests, settings.sampling, plan.rows, lambda: advance(1)
        )
    tasks = [TaskSamples(p.task_id, s) for p, s in zip(prompts, samples, strict=True)]
    return Generated(tasks, stats, plan)


def _speculative_tasks(
    loaded: LoadedModel,
    prompts: list[FittedPrompt],
    settings: RunSettings,
    advance: Callable[[int], None],
) -> Generated:
    from weighted_mtp.eval.speculative import speculative_sample

    stats, tasks = DecodeStats(), []
    for prompt in prompts:
        config = settings.task_sampling(prompt.task_id)
        samples = []
        for i in range(settings.n):
            one_config = dataclasses.replace(config, seed=sample_seed(config.seed, i))
            sample, one = speculative_sample(
                loaded, prompt.text, one_config, draft_heads=settings.draft_heads
            )
            samples.append(sample)
            stats.add(one)
            advance(1)
        tasks.append(TaskSamples(prompt.task_id, samples))
    return Generated(tasks, stats, None)


def gather_generated(ranks: Ranks, mine: Generated) -> Generated | None:
    """On rank 0, every rank's tasks in the order they were dealt from, their statistics
    summed (seconds: the ranks' generation seconds added up); None on the others."""
    shares = gather(ranks, mine)
    if shares is None:
        return None
    stats = DecodeStats()
    for share in shares:
        stats.add(share.stats)
    return Generated(undeal([share.tasks for share in shares]), stats, mine.batch)


def write_samples(path: Path, tasks: list[TaskSamples]) -> None:
    """samples.jsonl in the harness format, atomically."""
    with atomic_write(path, "w") as handle:
        for task in tasks:
            for sample_id, sample in enumerate(task.samples):
                handle.write(sample_line(sample_row(task.task_id, sample_id, sample)))


def sample_row(task_id: str, sample_id: int, sample: Continuation) -> dict[str, Any]:
    """A sample's line of samples.jsonl, as an object."""
    return {
        "task_id": task_id,
        "sample_id": sample_id,
        "completion": sample.text,
        "finish": sample.finish,
        "new_tokens": sample.generated,
    }


def sample_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def generated_samples(tasks: list[TaskSamples]) -> tuple[list[Sample], str]:
    """The samples `write_samples` writes, as scoring takes them, and the SHA-256 of the
    file it writes: what was generated goes to scoring in memory, never read back."""
    digest = hashlib.sha256()
    samples: list[Sample] = []
    for task in tasks:
        for sample_id, sample in enumerate(task.samples):
            row = sample_row(task.task_id, sample_id, sample)
            digest.update(sample_line(row).encode("utf-8"))
            samples.append(Sample(len(samples) + 1, task.task_id, sample.text, row))
    return samples, digest.hexdigest()


def _storage_model_record(layout: Layout, name: str) -> ModelRecord:
    paths = layout.model(name)
    metadata = read_json(paths.metadata, "metadata.json")
    return ModelRecord(
        name=name,
        source="storage",
        folder=str(paths.root),
        weights_sha256=metadata["weights"]["sha256"],
        metadata_sha256=sha256_file(paths.metadata),
    )


def _run_record(layout: Layout, run: FinishedRun) -> ModelRecord:
    """Which run, which of its files, and the weights' SHA-256 (for an adapter, the adapter's
    and the base's)."""
    paths = run.paths
    summary = read_json(paths.summary, paths.summary.name)
    training = TrainingRunRecord(
        folder=str(paths.root),
        experiment=run.experiment,
        steps=summary.get("steps"),
        config_sha256=sha256_file(paths.config),
        summary_sha256=sha256_file(paths.summary),
        final="adapter" if run.adapter else "model",
    )
    record = ModelRecord(name=run.name, source="run", folder=str(paths.final), run=training)
    if run.adapter:
        base = run.base
        if run.base_in_storage:
            stored = _storage_model_record(layout, base.name)
            assert stored.weights_sha256 is not None  # a storage model's always is
            base_record = BaseModelRecord(
                folder=stored.folder,
                weights_sha256=stored.weights_sha256,
                name=stored.name,
                source="storage",
                metadata_sha256=stored.metadata_sha256,
            )
        else:
            base_record = BaseModelRecord(
                folder=str(base.root), weights_sha256=sha256_file(base.weights)
            )
        adapter = sha256_file(paths.final / ADAPTER_WEIGHTS)
        return dataclasses.replace(record, adapter_sha256=adapter, base=base_record)
    final = run.final_model
    sums = read_sha256sums(final.sha256sums)
    return dataclasses.replace(record, weights_sha256=sums[final.weights.name])  # checked


def model_record(layout: Layout, model: str | FinishedRun) -> ModelRecord:
    """Which weights `model` is (before it loads: without its format)."""
    if isinstance(model, str):
        return _storage_model_record(layout, model)
    return _run_record(layout, model)


def settings_benchmark(layout: Layout, settings: RunSettings) -> SplitProblems:
    """The tasks `settings` evaluates: its dataset's split, tests, and first `limit` tasks."""
    return load_split(
        layout, settings.dataset, settings.split, tests=settings.tests, limit=settings.limit
    )


def dataset_record(benchmark: SplitProblems) -> DatasetRecord:
    """The benchmark and its raw files' SHA-256 (of the bytes its tasks were read from)."""
    return DatasetRecord(
        name=benchmark.dataset,
        split=benchmark.split,
        tests=benchmark.tests,
        tasks=len(benchmark.task_ids),
        raw=benchmark.raw_sha256,
    )


def evaluation_key(
    layout: Layout, name: str, settings: RunSettings, benchmark: SplitProblems
) -> dict[str, Any]:
    """What makes two evaluations interchangeable: the weights' and the evaluated files'
    SHA-256 and every setting that changes a sample or its verdict (all but `workers`).
    Equal to the `evaluation_key()` of the results.json such an evaluation writes.
    `benchmark` is `settings`' (`settings_benchmark`)."""
    model = model_record(layout, evaluated_model(layout, name))
    return result_files.evaluation_key(model, dataset_record(benchmark), settings.record())


def run_evaluation(
    layout: Layout,
    name: str,
    settings: RunSettings,
    out: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    benchmark: SplitProblems | None = None,
    batch_size: int | None = None,
) -> EvaluationResults | None:
    """Verify the model (`name`: a storage model or a training run), generate on `device`
    (`auto`, `cpu`, `cuda`, `cuda:N`), score; write samples.jsonl and results.json into
    `out` and return results.json's content. Under torchrun every rank generates its share
    and rank 0 writes and returns; the other ranks return None. `threads` caps torch's
    intra-op threads (small models on busy cores decode faster with one). The benchmark is
    read once (or given: `settings_benchmark(layout, settings)`, as `eval compare` shares
    it between runs) and the generated samples are scored as they are in memory. `batch_size`
    caps the rows decoded together (None: `auto`, sized from the free memory)."""
    ranks = torchrun_ranks()
    check_device(device)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, not {threads}")
    model = evaluated_model(layout, name)
    folder = generation_folder(layout, model)
    context = context_length(folder)
    require_room(settings, context, name)
    draft_heads = planned_draft_heads(settings, folder, name)
    if ranks.is_first:
        out = out or default_out_dir(layout, model, settings)
        require_new_folder(out)
    if benchmark is None:
        benchmark = settings_benchmark(layout, settings)
    budget = context - settings.sampling.max_new_tokens
    prompts = fitted_prompts(benchmark, folder.tokenizer_model, budget)
    target = resolve_device(device, ranks.world)
    start = time.perf_counter()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    dtype = generation_dtype(target)
    with progress.status(f"loading {name} on {target}"):
        loaded = (
            load_for_generation(layout, model, target, dtype)
            if isinstance(model, str)
            else load_run_for_generation(model, target, dtype)
        )
    pack_for_decoding(loaded)
    mine = generate_tasks(loaded, ranks.deal(prompts), settings, batch_size)
    generated = gather_generated(ranks, mine)
    if generated is None or out is None:
        return None
    result = layout.run(assets.EVAL_RESULTS, out)
    write_samples(result.samples, generated.tasks)
    decode = generated.stats
    samples, samples_sha256 = generated_samples(generated.tasks)
    dataset = dataset_record(benchmark)
    summary = score_generated(
        benchmark,
        samples,
        SamplesFile(result.samples, samples_sha256, dataset.raw),
        ScoreOptions(
            ks=tuple(k for k in PASS_AT if k <= settings.n),
            workers=settings.workers,
            limits=SandboxLimits(namespaces=settings.isolation),
            partial=settings.limit is not None,
        ),
    )
    results = EvaluationResults(
        warning=unconfined_warning(summary.sandbox) or None,
        model=dataclasses.replace(model_record(layout, model), format=loaded.kind),
        dataset=dataset,
        settings=settings.record(),
        stop_sequences=list(settings.sampling.stop),
        pass_at_k=summary.pass_at_k,
        plus_pass_at_k=summary.plus_pass_at_k,
        results=summary.results,
        plus_results=summary.plus_results,
        sandbox=summary.sandbox,
        n_tasks=summary.n_tasks,
        n_tasks_in_split=summary.n_tasks_in_split,
        unattempted=len(summary.unattempted),
        n_samples=summary.n_samples,
        tasks=summary.tasks,
        context=context,
        prompts_cut=[
            CutPrompt(p.task_id, p.fit, p.tokens, p.full_tokens)
            for p in prompts
            if p.fit != "whole"
        ],
        generation=GenerationRecord(
            device=str(target),
            dtype=str(dtype).removeprefix("torch."),
            ranks=ranks.world,
            batch_size=generated.batch.rows if generated.batch else 1,
            batch_size_reason=generated.batch.reason if generated.batch else "--speculative",
            seconds=round(decode.seconds, 3),
            new_tokens=decode.new_tokens,
            tokens_per_second=round(decode.tokens_per_second, 2),
            passes=decode.passes,
            draft_heads=draft_heads,
            drafted=decode.drafted,
            accepted=decode.accepted,
            acceptance_rate=decode.acceptance_rate,
        ),
        scoring_seconds=summary.wall_seconds,
        wall_seconds=round(time.perf_counter() - start, 3),
        samples=str(result.samples),
        created_at=utc_now(),
        tool_version=__version__,
    )
    write_json(result.results, results.to_json())
    return results
