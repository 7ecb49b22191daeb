"""The asset registry: every model and dataset of the storage, declared once.

A `ModelSpec` says what a model is (downloaded, or a micro model derived from another), its
format, the build steps that make it and the check groups that verify it. A `DatasetSpec`
is made from a benchmark module (`weighted_mtp.assets.benchmarks`, one module per dataset
behind the protocol in `weighted_mtp.assets.benchmark`): every dataset is downloaded,
prepared and sampled, and everything about its rows is the benchmark's. Every other module
asks here instead of comparing asset names: the layout takes the names, the build its steps,
the checklist its checks, conversion and micro models the format and the base.

This package is pure data and plain functions (no torch, no storage access), so anything
may import it. The catalog (`catalog.yaml`) only says where upstream files are; formats,
derivations and benchmarks are properties of the asset and live here.

To add a model: declare a `ModelSpec` in `MODEL_SPECS`, give it a catalog entry if it is
downloaded, and name its build steps and check group (see `pipeline/build.py` and
`pipeline/checklist.py` for what each step and check does). To add a dataset: add a
benchmark module and a catalog row of the same name; nothing here changes.

What wmtp *makes* from assets is declared here too, as `RunKind`s: the training runs of
each experiment, the suite, and evaluation results, with the folder under the storage's
`runs/` that holds them, the files that mark one complete, and what they are made from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from weighted_mtp.assets.benchmark import Benchmark
from weighted_mtp.assets.benchmarks import discover
from weighted_mtp.errors import UsageError

AssetKind = Literal["model", "dataset", "derived"]
FormatName = Literal["meta-mtp", "hf-llama"]
FORMAT_NAMES: tuple[FormatName, ...] = ("meta-mtp", "hf-llama")
BuildStep = Literal["download", "convert", "micro", "prepare", "small"]

META_MODEL = "meta-llama-mtp"
REFERENCE_MODEL = "ref-sheared-llama-2.7b"
MICRO_MTP = "micro-mtp"
MICRO_REF = "micro-ref"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the storage.

    `build` lists the build steps that produce it, in order; `checks` are the checklist
    groups that verify it. `raw_checkpoint_dir` is the folder inside raw/ that holds the upstream
    checkpoint as the upstream repo names it. `short` names its build steps
    (`download-meta`, `convert-ref`)."""

    name: str
    kind: Literal["model", "derived"]
    checks: tuple[str, ...]
    build: tuple[BuildStep, ...]
    format: FormatName
    # A policy model's reference: the model its critic and Rho-1 reference start from,
    # sharing its tokenizer.
    reference: str | None = None
    derived_from: str | None = None
    gated: bool = False
    raw_checkpoint_dir: str | None = None
    short: str | None = None
    keep_raw_on_clean: bool = False  # a clean start must not lose an ongoing large download
    upstream_tokenizer_json: bool = False  # its repo ships a tokenizer.json, kept and verified

    is_model = True
    is_dataset = False

    @property
    def is_derived(self) -> bool:
        return self.kind == "derived"

    @property
    def step_prefix(self) -> str:
        return self.short or self.name


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the storage: its benchmark (`benchmark.name` is its name), downloaded,
    prepared and sampled, verified by the raw and processed dataset checks."""

    benchmark: Benchmark

    kind: Literal["dataset"] = "dataset"
    checks: tuple[str, ...] = ("raw datasets", "processed datasets")
    build: tuple[BuildStep, ...] = ("download", "prepare", "small")

    is_model = False
    is_dataset = True
    is_derived = False

    @property
    def name(self) -> str:
        return self.benchmark.name

    @property
    def step_prefix(self) -> str:
        return self.name


AssetSpec = ModelSpec | DatasetSpec

MODEL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        META_MODEL,
        "model",
        checks=("raw models", "Meta model"),
        build=("download", "convert"),
        format="meta-mtp",
        gated=True,
        raw_checkpoint_dir="7B_1T_4",
        short="meta",
        keep_raw_on_clean=True,
        reference=REFERENCE_MODEL,
    ),
    ModelSpec(
        REFERENCE_MODEL,
        "model",
        checks=("raw models", "reference"),
        build=("download", "convert"),
        format="hf-llama",
        raw_checkpoint_dir="reference_model",
        short="ref",
        upstream_tokenizer_json=True,
    ),
    ModelSpec(
        MICRO_MTP,
        "derived",
        checks=("micro",),
        build=("micro",),
        format="meta-mtp",
        derived_from=META_MODEL,
        reference=MICRO_REF,
    ),
    ModelSpec(
        MICRO_REF,
        "derived",
        checks=("micro",),
        build=("micro",),
        format="hf-llama",
        derived_from=REFERENCE_MODEL,
    ),
)
BENCHMARKS: tuple[Benchmark, ...] = discover()
DATASET_SPECS: tuple[DatasetSpec, ...] = tuple(DatasetSpec(b) for b in BENCHMARKS)
ASSETS: tuple[AssetSpec, ...] = (*MODEL_SPECS, *DATASET_SPECS)

_BY_NAME = {spec.name: spec for spec in ASSETS}

_MODELS_BY_NAME = {spec.name: spec for spec in MODEL_SPECS}
_BENCHMARKS_BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}

MODELS = tuple(s.name for s in MODEL_SPECS)
BASE_MODELS = tuple(s.name for s in MODEL_SPECS if s.kind == "model")
MICRO_MODELS = tuple(s.name for s in MODEL_SPECS if s.is_derived)
DATASETS = tuple(b.name for b in BENCHMARKS)

# The base models' published architectures (the upstream params.json / config.json sizes),
# for what needs a model's shape before its files are downloaded (`wmtp train plan`). A
# downloaded or converted model's own config files take precedence.
PUBLISHED_ARCHITECTURES: dict[str, dict[str, object]] = {
    META_MODEL: {  # facebook/multi-token-prediction 7B_1T_4/params.json
        "dim": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "vocab_size": 32000,
        "multiple_of": 256,
        "norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "max_seq_len": 2048,
        "n_future_tokens": 4,
    },
    REFERENCE_MODEL: {  # princeton-nlp/Sheared-LLaMA-2.7B config.json
        "model_type": "llama",
        "hidden_size": 2560,
        "intermediate_size": 6912,
        "num_attention_heads": 20,
        "num_key_value_heads": 20,
        "num_hidden_layers": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}

# The model whose tokenizer the datasets are tokenized with and others are compared to.
TOKENIZER_MODEL = META_MODEL
# What `wmtp train` trains and `wmtp eval run` evaluates on when not told otherwise.
TRAIN_MODEL = MICRO_MTP
TRAIN_DATASET = "codecontests"
EVAL_DATASET = "humaneval"
# What `wmtp eval compare` and `wmtp train suite` measure pass@k on.
COMPARE_DATASETS = ("humaneval", "mbpp")


T = TypeVar("T")


def _named(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]`; any other name is one usage error listing the choices."""
    found = table.get(name)
    if found is None:
        raise UsageError(f"unknown {what} {name!r}", hint=f"choose one of: {', '.join(table)}")
    return found


def spec(name: str) -> AssetSpec:
    return _named(_BY_NAME, name, "asset")


def model(name: str) -> ModelSpec:
    return _named(_MODELS_BY_NAME, name, "model")


def benchmark(name: str) -> Benchmark:
    """The benchmark of dataset `name`."""
    return _named(_BENCHMARKS_BY_NAME, name, "dataset")


def compares_tokenizer(name: str) -> bool:
    """Whether `name`'s tokenizer is compared with `TOKENIZER_MODEL`'s (all but its own)."""
    return name != TOKENIZER_MODEL


def reference_pairs() -> str:
    """Each policy model's reference, as messages name them ("micro-ref for micro-mtp")."""
    return ", ".join(f"{s.reference} for {s.name}" for s in MODEL_SPECS if s.reference)


def checked_by(group: str) -> tuple[str, ...]:
    """The assets that the checklist group `group` verifies, in registry order."""
    return tuple(s.name for s in ASSETS if group in s.checks)


RunRole = Literal["training", "suite", "evaluation", "comparison"]


@dataclass(frozen=True)
class RunKind:
    """Something wmtp makes from assets, one folder per instance under `<root>/runs/<name>/`
    (or wherever `--out` puts it).

    `complete_when` are the files, relative to an instance's folder, that exist only once it
    finished; `made_from` what it reads (asset kinds and other run kinds); `final_model`
    whether its `final/` holds a generating model (full weights, merged, or a LoRA adapter
    on its base) that `wmtp eval run` accepts."""

    name: str
    role: RunRole
    complete_when: tuple[str, ...]
    made_from: tuple[str, ...]
    final_model: bool = False


SUMMARY_FILE = "summary.json"
STAGE_RECORD = "final/stage.json"  # what a stage-1 model is (train.final.STAGE_FILE)
SUITE = "suite"
EVAL_RESULTS = "eval"
COMPARISON = "compare"

RUN_KINDS: tuple[RunKind, ...] = (
    RunKind("baseline", "training", (SUMMARY_FILE,), ("model", "dataset"), final_model=True),
    RunKind("critic", "training", (SUMMARY_FILE, STAGE_RECORD), ("model", "dataset")),
    RunKind(
        "verifiable", "training", (SUMMARY_FILE,), ("model", "dataset", "critic"), final_model=True
    ),
    RunKind(
        "ref-tune", "training", (SUMMARY_FILE, STAGE_RECORD), ("model", "dataset"), final_model=True
    ),
    RunKind(
        "rho1", "training", (SUMMARY_FILE,), ("model", "dataset", "ref-tune"), final_model=True
    ),
    RunKind(
        SUITE,
        "suite",
        ("comparison.json",),
        ("baseline", "critic", "verifiable", "ref-tune", "rho1"),
    ),
    RunKind(EVAL_RESULTS, "evaluation", ("results.json", "samples.jsonl"), ("model", "dataset")),
    RunKind(
        COMPARISON,
        "comparison",
        ("comparison.json",),
        ("model", "dataset", "baseline", "verifiable", "ref-tune", "rho1", EVAL_RESULTS),
    ),
)

_RUN_KINDS = {kind.name: kind for kind in RUN_KINDS}
TRAINING_RUNS = tuple(k.name for k in RUN_KINDS if k.role == "training")


def run_kind(name: str) -> RunKind:
    found = _RUN_KINDS.get(name)
    if found is None:
        raise UsageError(
            f"unknown run kind {name!r}", hint=f"choose one of: {', '.join(_RUN_KINDS)}"
        )
    return found
