"""The asset registry: every model and dataset of storage v2, declared once.

An `AssetSpec` says what an asset is (model, dataset, or a model derived from another),
its format, where it comes from (the catalog entry of the same name, or `derived_from`),
the build steps that make it and the check groups that verify it. Every other module asks
here instead of comparing asset names: the layout takes the names, the build its steps, the
checklist its checks, conversion and micro models the format and the base.

This module is pure data (no torch, no storage access), so anything may import it. The
catalog (`catalog.yaml`) only says where upstream files are; formats and derivations are
properties of the asset and live here.

To add an asset: declare an `AssetSpec` in `ASSETS`, give it a catalog entry if it is
downloaded, and name its build steps and check group (see `pipeline/build.py` and
`pipeline/checklist.py` for what each step and check does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weighted_mtp.errors import UsageError

AssetKind = Literal["model", "dataset", "derived"]
FormatName = Literal["meta-mtp", "hf-llama"]
FORMAT_NAMES: tuple[FormatName, ...] = ("meta-mtp", "hf-llama")
# A dataset's upstream row schema, which decides how its rows become tasks.
DatasetFormat = Literal["codecontests", "mbpp", "humaneval"]
BuildStep = Literal["download", "convert", "micro", "prepare", "small"]

META_MODEL = "meta-llama-mtp"
REFERENCE_MODEL = "ref-sheared-llama-2.7b"
MICRO_MTP = "micro-mtp"
MICRO_REF = "micro-ref"


@dataclass(frozen=True)
class AssetSpec:
    """One asset of the storage.

    `build` lists the build steps that produce it, in order; `checks` are the checklist
    groups that verify it. `raw_checkpoint_dir` is the folder inside raw/ that holds the upstream
    checkpoint as the upstream repo names it. `short` names its build steps
    (`download-meta`, `convert-ref`)."""

    name: str
    kind: AssetKind
    checks: tuple[str, ...]
    build: tuple[BuildStep, ...]
    format: FormatName | None = None
    dataset_format: DatasetFormat | None = None
    raw_file: str | None = None  # a single-file dataset's raw JSONL name (without .jsonl)
    numbered_tasks: bool = False  # upstream task ids are integers, prepared as `<name>/<n>`
    derived_from: str | None = None
    gated: bool = False
    raw_checkpoint_dir: str | None = None
    short: str | None = None
    keep_raw_on_clean: bool = False  # a clean start must not lose an ongoing large download
    upstream_tokenizer_json: bool = False  # its repo ships a tokenizer.json, kept and verified

    @property
    def is_model(self) -> bool:
        return self.kind in ("model", "derived")

    @property
    def is_dataset(self) -> bool:
        return self.kind == "dataset"

    @property
    def is_derived(self) -> bool:
        return self.kind == "derived"

    @property
    def step_prefix(self) -> str:
        return self.short or self.name


def _dataset(
    name: DatasetFormat, raw_file: str | None = None, numbered_tasks: bool = False
) -> AssetSpec:
    """A dataset named after its upstream row schema, downloaded, prepared and sampled."""
    return AssetSpec(
        name,
        "dataset",
        checks=("raw datasets", "processed datasets"),
        build=("download", "prepare", "small"),
        dataset_format=name,
        raw_file=raw_file,
        numbered_tasks=numbered_tasks,
    )


ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec(
        META_MODEL,
        "model",
        checks=("raw models", "Meta model"),
        build=("download", "convert"),
        format="meta-mtp",
        gated=True,
        raw_checkpoint_dir="7B_1T_4",
        short="meta",
        keep_raw_on_clean=True,
    ),
    AssetSpec(
        REFERENCE_MODEL,
        "model",
        checks=("raw models", "reference"),
        build=("download", "convert"),
        format="hf-llama",
        raw_checkpoint_dir="reference_model",
        short="ref",
        upstream_tokenizer_json=True,
    ),
    AssetSpec(
        MICRO_MTP,
        "derived",
        checks=("micro",),
        build=("micro",),
        format="meta-mtp",
        derived_from=META_MODEL,
    ),
    AssetSpec(
        MICRO_REF,
        "derived",
        checks=("micro",),
        build=("micro",),
        format="hf-llama",
        derived_from=REFERENCE_MODEL,
    ),
    _dataset("codecontests"),
    _dataset("mbpp", raw_file="mbpp", numbered_tasks=True),
    _dataset("humaneval", raw_file="HumanEval"),
)

_BY_NAME = {spec.name: spec for spec in ASSETS}

MODELS = tuple(s.name for s in ASSETS if s.is_model)
BASE_MODELS = tuple(s.name for s in ASSETS if s.kind == "model")
MICRO_MODELS = tuple(s.name for s in ASSETS if s.is_derived)
DATASETS = tuple(s.name for s in ASSETS if s.is_dataset)

# The model whose tokenizer the datasets are tokenized with and others are compared to.
TOKENIZER_MODEL = META_MODEL


def spec(name: str) -> AssetSpec:
    found = _BY_NAME.get(name)
    if found is None:
        raise UsageError(f"unknown asset {name!r}", hint=f"choose one of: {', '.join(_BY_NAME)}")
    return found


def compares_tokenizer(name: str) -> bool:
    """Whether `name`'s tokenizer is compared with `TOKENIZER_MODEL`'s (all but its own)."""
    return name != TOKENIZER_MODEL


def checked_by(group: str) -> tuple[str, ...]:
    """The assets that the checklist group `group` verifies, in registry order."""
    return tuple(s.name for s in ASSETS if group in s.checks)
