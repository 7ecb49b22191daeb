"""The typed records `wmtp eval run` and `wmtp eval compare` write: `results.json`
(`EvaluationResults`) and `comparison.json` (`ComparisonRecord`).

They are plain dataclasses, written with `to_json` and read back with `read_record`, which
checks a file against the type (a file of another shape is one error naming it). Their JSON
Schemas are generated from the types and published under `docs/schemas/`; a test
regenerates them and compares, and tests validate what the commands write against them.
Regenerate after changing a record: `uv run python -m tests.schemas`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from weighted_mtp.errors import WmtpError
from weighted_mtp.eval.prompts import Fit
from weighted_mtp.storage.atomic import read_json

# ------------------------------------------------------------------ results.json


@dataclass(frozen=True)
class TrainingRunRecord:
    """The finished training run an evaluated model comes from."""

    folder: str
    experiment: str
    steps: int | None
    config_sha256: str
    summary_sha256: str
    final: Literal["adapter", "model"]


@dataclass(frozen=True)
class BaseModelRecord:
    """A LoRA run's base model: a storage model (named, with its metadata's SHA-256) or a
    model folder."""

    folder: str
    weights_sha256: str
    name: str | None = None
    source: Literal["storage"] | None = None
    metadata_sha256: str | None = None


@dataclass(frozen=True)
class ModelRecord:
    """Which weights were evaluated: a storage model (`source` "storage") or a training
    run's final model (`source` "run", with `run`); a LoRA run has `adapter_sha256` and
    `base` instead of `weights_sha256`. `format` is how it loaded: "mtp" or "hf"."""

    name: str
    source: Literal["storage", "run"]
    folder: str
    weights_sha256: str | None = None
    metadata_sha256: str | None = None
    run: TrainingRunRecord | None = None
    adapter_sha256: str | None = None
    base: BaseModelRecord | None = None
    format: str | None = None

    def weights(self) -> dict[str, str]:
        """The SHA-256 of every weights file the model is made of, by role."""
        named = {
            "weights_sha256": self.weights_sha256,
            "adapter_sha256": self.adapter_sha256,
            "base_weights_sha256": self.base.weights_sha256 if self.base else None,
        }
        return {role: sha for role, sha in named.items() if sha is not None}


@dataclass(frozen=True)
class DatasetRecord:
    """The benchmark: its split, tests, number of tasks and raw files' SHA-256."""

    name: str
    split: str
    tests: str  # a test choice of the benchmark (`Benchmark.test_choices`)
    tasks: int
    raw: dict[str, str]


@dataclass(frozen=True)
class SettingsRecord:
    """Every setting of the evaluation, as the command line names them."""

    dataset: str
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    speculative: bool
    limit: int | None
    seed: int
    split: str
    workers: int
    tests: str  # a test choice of the benchmark (`Benchmark.test_choices`)
    draft_heads: int | None  # what was asked; `generation.draft_heads` what ran
    isolation: bool = True  # False: --no-isolation (results files without it were isolated)

    def key(self) -> dict[str, Any]:
        """The settings that change a sample or its verdict (all but `workers`)."""
        return {name: value for name, value in asdict(self).items() if name != "workers"}


@dataclass(frozen=True)
class TaskCount:
    """A task's samples and how many passed; `plus_passed`, how many passed the plus tests
    too (null: the benchmark has none)."""

    samples: int
    passed: int
    plus_passed: int | None = None


@dataclass(frozen=True)
class CutPrompt:
    """A prompt cut to fit the context: how, and its tokens (BOS included) before and after."""

    task_id: str
    fit: Fit
    tokens: int
    full_tokens: int


@dataclass(frozen=True)
class GenerationRecord:
    """Where and how fast the samples were generated; with --speculative the draft heads
    per pass and how many drafts were accepted."""

    device: str
    dtype: str
    ranks: int
    batch_size: int  # rows decoded together (1: --speculative)
    batch_size_reason: str  # why that many (`--batch-size auto` says what it chose)
    seconds: float
    new_tokens: int
    tokens_per_second: float
    passes: int
    draft_heads: int | None
    drafted: int
    accepted: int
    acceptance_rate: float | None


@dataclass(frozen=True)
class EvaluationResults:
    """results.json of `wmtp eval run` (docs/evaluation.md). `sandbox` is what the
    sandbox reports of its protections in force (docs/evaluation-sandbox.md); `warning`,
    the first key, says when they were none (--no-isolation), else it is null."""

    warning: str | None
    model: ModelRecord
    dataset: DatasetRecord
    settings: SettingsRecord
    stop_sequences: list[str]
    pass_at_k: dict[str, float | None]
    plus_pass_at_k: dict[str, float | None] | None  # the plus tests too (null: none)
    results: dict[str, int]
    plus_results: dict[str, int] | None  # the samples' plus verdicts (null: no plus tests)
    sandbox: dict[str, Any]
    n_tasks: int
    n_tasks_in_split: int
    unattempted: int
    n_samples: int
    tasks: dict[str, TaskCount]
    context: int
    prompts_cut: list[CutPrompt]
    generation: GenerationRecord
    scoring_seconds: float
    wall_seconds: float
    samples: str
    created_at: str
    tool_version: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def evaluation_key(self) -> dict[str, Any]:
        """What makes two evaluations interchangeable (`eval.run.evaluation_key`)."""
        return evaluation_key(self.model, self.dataset, self.settings)


def evaluation_key(
    model: ModelRecord, dataset: DatasetRecord, settings: SettingsRecord
) -> dict[str, Any]:
    """The weights' and the evaluated files' SHA-256 and every setting that changes a sample
    or its verdict."""
    return {
        "weights": model.weights(),
        "dataset_sha256": sorted(dataset.raw.values()),
        "settings": settings.key(),
    }


# ------------------------------------------------------------------ comparison.json


@dataclass(frozen=True)
class IntervalRecord:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class DifferenceRecord:
    """A run's pass@k minus the Baseline's, with its paired interval."""

    estimate: float
    low: float
    high: float
    excludes_zero: bool


@dataclass(frozen=True)
class McNemarRecord:
    baseline_only: int  # tasks the Baseline passes and the other fails
    other_only: int  # tasks the other passes and the Baseline fails
    p_value: float


@dataclass(frozen=True)
class VersusBaseline:
    """One run against the Baseline: the difference per pass@k, and with one sample per
    task McNemar's exact test (else null)."""

    pass_at_k: dict[str, DifferenceRecord]
    mcnemar: McNemarRecord | None


@dataclass(frozen=True)
class EvaluationSource:
    """Where a run's evaluation of a dataset is (relative to the comparison when inside it),
    and the SHA-256 of its samples and of its per-sample verdicts."""

    folder: str
    samples_sha256: str
    verdicts_sha256: str


@dataclass(frozen=True)
class DatasetComparisonRecord:
    split: str
    n_tasks: int
    evaluations: dict[str, EvaluationSource]
    pass_at_k: dict[str, dict[str, IntervalRecord]]  # pass@k -> run -> interval
    versus_baseline: dict[str, VersusBaseline]  # each run but the Baseline
    # With the plus tests too (benchmarks that have them, else null), as pass_at_k.
    plus_pass_at_k: dict[str, dict[str, IntervalRecord]] | None = None
    plus_versus_baseline: dict[str, dict[str, DifferenceRecord]] | None = None


@dataclass(frozen=True)
class ComparedRunRecord:
    """A compared run and its weights' SHA-256 (a LoRA run: its adapter's and base's)."""

    name: str
    label: str
    weights_sha256: str | None = None
    adapter_sha256: str | None = None
    base_weights_sha256: str | None = None


@dataclass(frozen=True)
class GenerationSettingsRecord:
    """Every evaluation's generation settings (its dataset and split are per dataset)."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    speculative: bool
    limit: int | None
    seed: int
    tests: str  # a test choice of the benchmark (`Benchmark.test_choices`)
    draft_heads: int | None
    isolation: bool = True  # False: --no-isolation

    @classmethod
    def of(cls, settings: SettingsRecord) -> GenerationSettingsRecord:
        """An evaluation's settings less those that are per dataset or do not change a
        sample (dataset, split, workers)."""
        kept = {field.name for field in fields(cls)}
        return cls(**{name: v for name, v in asdict(settings).items() if name in kept})


@dataclass(frozen=True)
class BootstrapRecord:
    resamples: int
    confidence: float
    seed: int
    method: str


@dataclass(frozen=True)
class CompareSettingsRecord:
    datasets: list[str]
    ks: list[int]
    generation: GenerationSettingsRecord
    bootstrap: BootstrapRecord
    test: str | None  # McNemar's, with one sample per task


@dataclass(frozen=True)
class ComparisonRecord:
    """comparison.json of `wmtp eval compare` (docs/evaluation-compare.md): nothing in it
    depends on the clock or on where it is written."""

    baseline: str
    runs: list[ComparedRunRecord]
    settings: CompareSettingsRecord
    datasets: dict[str, DatasetComparisonRecord]
    tool_version: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ reading back

R = TypeVar("R", EvaluationResults, ComparisonRecord)


def read_record(kind: type[R], path: Path) -> R:
    """The record in `path`; a file that is not one (or one an older version wrote in
    another shape) is one error naming it."""
    from pydantic import TypeAdapter, ValidationError  # on use: slow to import

    data = read_json(path, path.name)
    try:
        return TypeAdapter(kind).validate_python(data, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise WmtpError(
            f"not a {path.name} this version reads: {where}: {first['msg']} "
            f"({exc.error_count()} problem(s))",
            path=path,
        ) from None
