"""`wmtp eval run`: a benchmark's tasks, generation, scoring, results.json.

The tasks are a split of the benchmark's raw records, whole (`eval.tasks`), and each prompt
is the task's training prompt (the Alpaca template the model was trained on,
`weighted_mtp.data.template`), so the completion is what a training response is:
HumanEval's function body, MBPP's and CodeContests' whole program. A prompt longer than
the model's context leaves for the completion is cut at its head (`eval.prompts`), and
results.json names those tasks. Where a completion stops and which split is read by
default are the dataset's registry facts.

What is evaluated is a storage model, or a finished training run's `final/` model (a run
folder, `<experiment>/<run-id>` or a run id under the storage's runs folder); results.json
records which, with the SHA-256 of the weights and the run's identity, and the device and
dtype it generated in. Under torchrun the tasks are dealt out to the ranks (`eval.ranks`)
and rank 0 writes the same samples.jsonl one process would: each sample's random draws
depend only on (seed, task, sample index), never on the rank or the batch beside it.

Every setting is checked when `RunSettings` is made and the model, device and output
folder before any weights load: a bad value is one line, not a traceback minutes later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from weighted_mtp import __version__, assets, progress
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import UsageError
from weighted_mtp.eval import defaults
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
from weighted_mtp.eval.prompts import FittedPrompt, fit_prompt
from weighted_mtp.eval.ranks import Ranks, gather, torchrun_ranks, undeal
from weighted_mtp.eval.sandbox import SandboxLimits, unconfined_warning
from weighted_mtp.eval.scoring import require_writable, score_samples
from weighted_mtp.eval.tasks import (
    Benchmark,
    TestChoice,
    load_benchmark,
    require_split,
    require_tests,
)
from weighted_mtp.storage.atomic import atomic_write, read_json, write_json
from weighted_mtp.storage.finished_runs import ADAPTER_WEIGHTS, FinishedRun, find_run, finished_run
from weighted_mtp.storage.freshness import Store
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths, RunPaths

PASS_AT = (1, 10, 100)


@dataclass(frozen=True)
class RunSettings:
    """What to generate and how to score it; `split` "" means the dataset's evaluation
    split. Checked when made: a bad value is one `UsageError`."""

    dataset: str
    n: int = defaults.SAMPLES_PER_TASK
    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    speculative: bool = False
    limit: int | None = None
    seed: int = 0
    split: str = ""
    workers: int = defaults.SANDBOX_WORKERS
    tests: TestChoice = "base"
    draft_heads: int | None = None  # speculative: drafts per pass (None: the model's default)
    isolation: bool = True  # False: --no-isolation (not root, no user namespaces)

    def __post_init__(self) -> None:
        assets.dataset_format(self.dataset)  # an unknown dataset is a usage error
        if not self.split:
            object.__setattr__(self, "split", assets.spec(self.dataset).eval_split)
        require_split(self.dataset, self.split)
        object.__setattr__(self, "tests", require_tests(self.dataset, self.tests))
        for name, value, low in (
            ("-n/--samples", self.n, 1),
            ("--max-new-tokens", self.max_new_tokens, 1),
            ("--limit", self.limit, 1),
            ("--workers", self.workers, 1),
            ("--seed", self.seed, 0),
            ("--draft-heads", self.draft_heads, 1),
        ):
            if value is not None and value < low:
                raise UsageError(f"{name} must be at least {low}, not {value}")
        if self.draft_heads is not None and not self.speculative:
            raise UsageError("--draft-heads needs --speculative")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UsageError(
                f"--temperature must be a finite number >= 0, not {self.temperature}",
                hint="0 decodes greedily",
            )
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise UsageError(f"--top-p must be in (0, 1], not {self.top_p}")

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return assets.spec(self.dataset).stop_sequences

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            self.max_new_tokens, self.temperature, self.top_p, self.seed, self.stop_sequences
        )

    def task_sampling(self, task_id: str) -> SamplingConfig:
        """The sampling of one task: its seed a function of the run's seed and the task."""
        return dataclasses.replace(self.sampling(), seed=sample_seed(self.seed, task_id))


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


def finished_results(out: Path) -> dict[str, Any] | None:
    """The results.json of a complete evaluation in `out` (results and samples both
    written), or None: lets a caller reuse an evaluation instead of repeating it."""
    paths = RunPaths(out, assets.run_kind(assets.EVAL_RESULTS))
    if not paths.complete:
        return None
    results: dict[str, Any] = read_json(paths.results, paths.results.name)
    return results


def require_room(settings: RunSettings, context: int, model: str) -> None:
    """BOS, at least one prompt token and `max_new_tokens` fit the model's context."""
    if settings.max_new_tokens > context - 2:
        raise UsageError(
            f"--max-new-tokens {settings.max_new_tokens} leaves no room for a prompt in "
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


def fitted_prompts(benchmark: Benchmark, tokenizer_model: Path, budget: int) -> list[FittedPrompt]:
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
        positions = max((len(r.ids) for r in requests), default=0) + settings.max_new_tokens
        plan = plan_batch(loaded, batch_size, len(requests) * settings.n, positions)
        samples, stats = generate(
            loaded, requests, settings.sampling(), plan.rows, lambda: advance(1)
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
                row = {
                    "task_id": task.task_id,
                    "sample_id": sample_id,
                    "completion": sample.text,
                    "finish": sample.finish,
                    "new_tokens": sample.generated,
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _storage_model_record(layout: Layout, name: str) -> dict[str, Any]:
    paths = layout.model(name)
    metadata = read_json(paths.metadata, "metadata.json")
    return {
        "name": name,
        "source": "storage",
        "folder": str(paths.root),
        "weights_sha256": metadata["weights"]["sha256"],
        "metadata_sha256": sha256_file(paths.metadata),
    }


def _run_record(layout: Layout, run: FinishedRun) -> dict[str, Any]:
    """Which run, which of its files, and the weights' SHA-256 (for an adapter, the adapter's
    and the base's)."""
    paths = run.paths
    summary = read_json(paths.summary, paths.summary.name)
    record: dict[str, Any] = {
        "name": run.name,
        "source": "run",
        "folder": str(paths.final),
        "run": {
            "folder": str(paths.root),
            "experiment": run.experiment,
            "steps": summary.get("steps"),
            "config_sha256": sha256_file(paths.config),
            "summary_sha256": sha256_file(paths.summary),
            "final": "adapter" if run.adapter else "model",
        },
    }
    if run.adapter:
        record["adapter_sha256"] = sha256_file(paths.final / ADAPTER_WEIGHTS)
        base = run.base
        record["base"] = (
            _storage_model_record(layout, base.name)
            if run.base_in_storage
            else {"folder": str(base.root), "weights_sha256": sha256_file(base.weights)}
        )
    else:
        final = run.final_model
        sums = read_sha256sums(final.sha256sums)
        record["weights_sha256"] = sums[final.weights.name]  # checked before loading
    return record


def _model_record(layout: Layout, model: str | FinishedRun, loaded: LoadedModel) -> dict[str, Any]:
    record = (
        _storage_model_record(layout, model)
        if isinstance(model, str)
        else _run_record(layout, model)
    )
    return record | {"format": loaded.kind}


def settings_benchmark(layout: Layout, settings: RunSettings) -> Benchmark:
    """The tasks `settings` evaluates: its dataset's split, tests, and first `limit` tasks."""
    return load_benchmark(
        layout, settings.dataset, settings.split, tests=settings.tests, limit=settings.limit
    )


def _dataset_record(layout: Layout, benchmark: Benchmark) -> dict[str, Any]:
    """The benchmark's raw files' SHA-256, from the freshness store where it vouches for
    them (a raw CodeContests split is gigabytes); the store is only read, an evaluation does
    not write into the storage's records."""
    store = Store(layout)
    return {
        "name": benchmark.dataset,
        "split": benchmark.split,
        "tests": benchmark.tests,
        "tasks": len(benchmark.task_ids),
        "raw": {str(p): store.sha256(p) for p in benchmark.files},
    }


def evaluation_key(layout: Layout, name: str, settings: RunSettings) -> dict[str, Any]:
    """What makes two evaluations interchangeable: the weights' and the evaluated files'
    SHA-256 and every setting that changes a sample or its verdict (all but `workers`).
    Equal to `recorded_evaluation_key` of the results.json such an evaluation writes."""
    benchmark = settings_benchmark(layout, settings)  # one line if it is not there
    model = evaluated_model(layout, name)
    record = (
        _storage_model_record(layout, model)
        if isinstance(model, str)
        else _run_record(layout, model)
    )
    return _evaluation_key(record, _dataset_record(layout, benchmark), asdict(settings))


def recorded_evaluation_key(results: Any) -> dict[str, Any] | None:
    """`evaluation_key` of what a results.json records; None if it lacks a part of it."""
    try:
        return _evaluation_key(results["model"], results["dataset"], results["settings"])
    except (KeyError, TypeError, AttributeError):
        return None


def _evaluation_key(
    model: dict[str, Any], dataset: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    base = model.get("base") or {}
    weights = {
        "weights_sha256": model.get("weights_sha256"),
        "adapter_sha256": model.get("adapter_sha256"),
        "base_weights_sha256": base.get("weights_sha256"),
    }
    return {
        "weights": {name: sha for name, sha in weights.items() if sha is not None},
        "dataset_sha256": sorted(dataset["raw"].values()),
        "settings": {k: v for k, v in ({"isolation": True} | settings).items() if k != "workers"},
    }


def run_evaluation(
    layout: Layout,
    name: str,
    settings: RunSettings,
    out: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any] | None:
    """Verify the model (`name`: a storage model or a training run), generate on `device`
    (`auto`, `cpu`, `cuda`, `cuda:N`), score; write samples.jsonl and results.json into
    `out` and return results.json's content. Under torchrun every rank generates its share
    and rank 0 writes and returns; the other ranks return None. `threads` caps torch's
    intra-op threads (small models on busy cores decode faster with one). `batch_size`
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
    benchmark = settings_benchmark(layout, settings)
    prompts = fitted_prompts(benchmark, folder.tokenizer_model, context - settings.max_new_tokens)
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
    summary = score_samples(
        layout,
        settings.dataset,
        result.samples,
        ks=tuple(k for k in PASS_AT if k <= settings.n),
        split=settings.split,
        tests=settings.tests,
        workers=settings.workers,
        limits=SandboxLimits(namespaces=settings.isolation),
        partial=settings.limit is not None,
    )
    warning = unconfined_warning(summary.sandbox)
    results = {
        **({"warning": warning} if warning else {}),  # the first line that says anything
        "model": _model_record(layout, model, loaded),
        "dataset": _dataset_record(layout, benchmark),
        "settings": asdict(settings),
        "stop_sequences": list(settings.stop_sequences),
        "pass_at_k": summary.pass_at_k,
        "results": summary.results,
        "sandbox": summary.sandbox,
        "n_tasks": summary.n_tasks,
        "n_tasks_in_split": summary.n_tasks_in_split,
        "unattempted": len(summary.unattempted),
        "n_samples": summary.n_samples,
        "tasks": summary.tasks,
        "context": context,
        "prompts_cut": [p.record() for p in prompts if p.fit != "whole"],
        "generation": {
            "device": str(target),
            "dtype": str(dtype).removeprefix("torch."),
            "ranks": ranks.world,
            "batch_size": generated.batch.rows if generated.batch else 1,
            "batch_size_reason": generated.batch.reason if generated.batch else "--speculative",
            "seconds": round(decode.seconds, 3),
            "new_tokens": decode.new_tokens,
            "tokens_per_second": round(decode.tokens_per_second, 2),
            "passes": decode.passes,
            "draft_heads": draft_heads,
            "drafted": decode.drafted,
            "accepted": decode.accepted,
            "acceptance_rate": decode.acceptance_rate,
        },
        "scoring_seconds": summary.wall_seconds,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "samples": str(result.samples),
        "created_at": utc_now(),
        "tool_version": __version__,
    }
    write_json(result.results, results)
    return results
