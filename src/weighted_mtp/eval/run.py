"""`wmtp eval run`: prompts from the processed records, generation, scoring, results.json.

The prompt is each task's processed record prompt (the Alpaca template the model was trained
on, `weighted_mtp.data.template`), so the completion is what a training response is:
HumanEval's function body, MBPP's and CodeContests' whole program. Where a completion
stops and which split is read by default are the dataset's registry facts.

What is evaluated is a storage model, or a finished training run's `final/` model (a run
folder, `<experiment>/<run-id>` or a run id under the storage's runs folder); results.json
records which, with the SHA-256 of the weights and the run's identity.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from weighted_mtp import __version__, assets, progress
from weighted_mtp.clock import utc_now
from weighted_mtp.data.sources import iter_jsonl
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.generate import (
    Continuation,
    DecodeStats,
    LoadedModel,
    SamplingConfig,
    load_for_generation,
    load_run_for_generation,
    sample_prompt,
)
from weighted_mtp.eval.scoring import score_samples
from weighted_mtp.eval.tasks import raw_files
from weighted_mtp.storage.atomic import atomic_write, read_json, write_json
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths
from weighted_mtp.storage.stamps import Store
from weighted_mtp.train.runs import ADAPTER_WEIGHTS, FinishedRun, find_run, finished_run

PASS_AT = (1, 10, 100)


@dataclass(frozen=True)
class RunSettings:
    """How to sample and score; `split` "" means the dataset's evaluation split."""

    dataset: str
    n: int = 20
    temperature: float = 0.2
    top_p: float = 0.95
    max_new_tokens: int = 512
    speculative: bool = False
    limit: int | None = None
    seed: int = 0
    split: str = ""
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.split:
            object.__setattr__(self, "split", assets.spec(self.dataset).eval_split)

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return assets.spec(self.dataset).stop_sequences

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            self.max_new_tokens, self.temperature, self.top_p, self.seed, self.stop_sequences
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
    return f"{model.config.experiment}-{model.paths.root.name}"


def eval_prompts(
    layout: Layout, dataset: str, split: str, limit: int | None
) -> list[tuple[str, str]]:
    """(task id, prompt) of each task of a processed split, in file order."""
    path = layout.dataset(dataset).split(split)
    if not path.is_file():
        raise WmtpError(
            f"processed {dataset} {split} records not found",
            path=path,
            hint=f"run `wmtp data prepare {dataset}` first",
        )
    prompts: dict[str, str] = {}
    for _line, record in iter_jsonl(path):
        prompts.setdefault(record["metadata"]["task_id"], record["prompt"])
        if limit is not None and len(prompts) >= limit:
            break
    return list(prompts.items())


def default_out_dir(layout: Layout, model: str | FinishedRun, settings: RunSettings) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = "-speculative" if settings.speculative else ""
    return layout.eval_runs_dir / _label(model) / f"{settings.dataset}-{stamp}{mode}"


def _samples_of_task(
    loaded: LoadedModel, prompt: str, settings: RunSettings, index: int
) -> tuple[list[Continuation], DecodeStats]:
    config = replace(settings.sampling(), seed=settings.seed + index)
    if not settings.speculative:
        return sample_prompt(loaded, prompt, settings.n, config)
    from weighted_mtp.eval.speculative import speculative_sample

    stats, samples = DecodeStats(), []
    for i in range(settings.n):
        sample, one = speculative_sample(loaded, prompt, config, seed_offset=i * 7919)
        samples.append(sample)
        stats.add(one)
    return samples, stats


def generate_samples(
    loaded: LoadedModel, prompts: list[tuple[str, str]], settings: RunSettings, samples_path: Path
) -> DecodeStats:
    """Generate n samples per task and write them (harness format) atomically."""
    total = DecodeStats()
    with (
        progress.task("generating", len(prompts) * settings.n, "samples") as advance,
        atomic_write(samples_path, "w") as handle,
    ):
        for index, (task_id, prompt) in enumerate(prompts):
            samples, stats = _samples_of_task(loaded, prompt, settings, index)
            total.add(stats)
            for sample_id, sample in enumerate(samples):
                row = {
                    "task_id": task_id,
                    "sample_id": sample_id,
                    "completion": sample.text,
                    "finish": sample.finish,
                    "new_tokens": sample.generated,
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            advance(len(samples))
    return total


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
            "experiment": run.config.experiment,
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
        final = ModelPaths(run.name, paths.final)
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


def _dataset_record(layout: Layout, settings: RunSettings) -> dict[str, Any]:
    """The evaluated files' SHA-256, from the freshness store where it vouches for them
    (a raw CodeContests split is gigabytes); the store is only read, an evaluation does not
    write into the storage's records."""
    store = Store(layout)
    processed = layout.dataset(settings.dataset).split(settings.split)
    return {
        "name": settings.dataset,
        "split": settings.split,
        "processed": {str(processed): store.sha256(processed)},
        "raw": {
            str(p): store.sha256(p) for p in raw_files(layout, settings.dataset, settings.split)
        },
    }


def evaluation_key(layout: Layout, name: str, settings: RunSettings) -> dict[str, Any]:
    """What makes two evaluations interchangeable: the weights' and the evaluated files'
    SHA-256 and every setting that changes a sample or its verdict (all but `workers`).
    Equal to `recorded_evaluation_key` of the results.json such an evaluation writes."""
    eval_prompts(layout, settings.dataset, settings.split, 1)  # one line if it is not there
    model = evaluated_model(layout, name)
    record = (
        _storage_model_record(layout, model)
        if isinstance(model, str)
        else _run_record(layout, model)
    )
    return _evaluation_key(record, _dataset_record(layout, settings), asdict(settings))


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
        "dataset_sha256": sorted(dataset["processed"].values()) + sorted(dataset["raw"].values()),
        "settings": {k: v for k, v in settings.items() if k != "workers"},
    }


def run_evaluation(
    layout: Layout,
    name: str,
    settings: RunSettings,
    out: Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> dict[str, Any]:
    """Verify the model (`name`: a storage model or a training run), generate, score; write
    samples.jsonl and results.json into `out`. `threads` caps torch's intra-op threads
    (small models on busy cores decode faster with one)."""
    if settings.n < 1 or settings.max_new_tokens < 1:
        raise UsageError("--n and --max-new-tokens must be at least 1")
    model = evaluated_model(layout, name)
    prompts = eval_prompts(layout, settings.dataset, settings.split, settings.limit)
    out = out or default_out_dir(layout, model, settings)
    result = layout.run(assets.EVAL_RESULTS, out)
    if out.exists() and any(out.iterdir()):
        raise UsageError("output folder is not empty", path=out, hint="choose a new --out")
    start = time.perf_counter()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    loaded = (
        load_for_generation(layout, model, device)
        if isinstance(model, str)
        else load_run_for_generation(model, device)
    )
    if settings.speculative and loaded.kind != "mtp":
        raise UsageError(
            f"--speculative needs a model with MTP heads; {name!r} is a {loaded.kind} model"
        )
    samples_path = result.samples
    decode = generate_samples(loaded, prompts, settings, samples_path)
    summary = score_samples(
        layout,
        settings.dataset,
        samples_path,
        ks=tuple(k for k in PASS_AT if k <= settings.n),
        split=settings.split,
        workers=settings.workers,
    )
    results = {
        "model": _model_record(layout, model, loaded),
        "dataset": _dataset_record(layout, settings),
        "settings": asdict(settings),
        "stop_sequences": list(settings.stop_sequences),
        "pass_at_k": summary.pass_at_k,
        "results": summary.results,
        "sandbox": summary.sandbox,
        "n_tasks": summary.n_tasks,
        "n_samples": summary.n_samples,
        "generation": {
            "seconds": round(decode.seconds, 3),
            "new_tokens": decode.new_tokens,
            "tokens_per_second": round(decode.tokens_per_second, 2),
            "drafted": decode.drafted,
            "accepted": decode.accepted,
            "acceptance_rate": decode.acceptance_rate,
        },
        "scoring_seconds": summary.wall_seconds,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "samples": str(samples_path),
        "created_at": utc_now(),
        "tool_version": __version__,
    }
    write_json(result.results, results)
    return results
