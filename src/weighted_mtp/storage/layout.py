"""The single definition of the storage layout.

Every path under the storage root is named here. Other modules ask a `Layout` for paths and
never assemble storage paths from strings, so moving a file means editing one place.

    <root>/
      models_v2/{meta-llama-mtp,ref-sheared-llama-2.7b,micro-mtp,micro-ref}/
          raw/ safetensors/ configs/ tokenizer/ metadata.json
      datasets_v2/{codecontests,mbpp,humaneval}/{raw,processed,stats}/
      datasets_local_small/{codecontests,mbpp,humaneval}_small/
      MANIFEST.json  APPROVALS.json  README.md  reports/
      runs/<run kind>/...      what wmtp makes from the assets (`assets.RUN_KINDS`):
          {baseline,critic,verifiable,ref-tune,rho1}/<run-id>/   training runs
          suite/<stamp>/                                         `wmtp train suite`
          eval/<model>/<dataset>-<stamp>/                        `wmtp eval run` results
          compare/<stamp>/                                       `wmtp eval compare`
              comparison.{json,md} pass_at_k.png eval/<n>-<run>/<dataset>/
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from weighted_mtp import assets

# Asset names are declared in the registry; re-exported here for path-minded callers.
from weighted_mtp.assets import BASE_MODELS as BASE_MODELS
from weighted_mtp.assets import DATASETS as DATASETS
from weighted_mtp.assets import META_MODEL as META_MODEL
from weighted_mtp.assets import MICRO_MODELS as MICRO_MODELS
from weighted_mtp.assets import MICRO_MTP as MICRO_MTP
from weighted_mtp.assets import MICRO_REF as MICRO_REF
from weighted_mtp.assets import MODELS as MODELS
from weighted_mtp.assets import REFERENCE_MODEL as REFERENCE_MODEL
from weighted_mtp.assets.split_rules import SPLITS as SPLITS
from weighted_mtp.errors import WmtpError

STORAGE_VERSION = "2.0.0"


MODEL_SUBDIRS = ("raw", "safetensors", "configs", "tokenizer")
DATASET_SUBDIRS = ("raw", "processed", "stats")
LEGACY_DIRS = ("models", "datasets")

CACHE_DIR = ".cache"
RESULTS_FILE = "results.json"  # an evaluation's scores and what it evaluated


def safe_relative(relpath: str | PurePosixPath) -> PurePosixPath:
    """A relative POSIX path that cannot leave the folder it is joined to."""
    rel = PurePosixPath(str(relpath).replace("\\", "/"))
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or rel.parts[0].endswith(":"):
        raise WmtpError(
            f"path {str(relpath)!r} points outside its folder",
            hint="use a plain relative path without '..'",
        )
    return rel


@dataclass(frozen=True)
class ModelPaths:
    name: str
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def safetensors_dir(self) -> Path:
        return self.root / "safetensors"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def cache(self) -> Path:
        return self.root / CACHE_DIR

    @property
    def weights(self) -> Path:
        return self.safetensors_dir / "model.safetensors"

    @property
    def sha256sums(self) -> Path:
        return self.safetensors_dir / "SHA256SUMS"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.json"

    @property
    def source(self) -> Path:
        return self.raw / "SOURCE.json"

    @property
    def raw_checkpoint_dir(self) -> Path:
        return self.raw / (assets.model(self.name).raw_checkpoint_dir or "checkpoint")

    @property
    def raw_meta_checkpoint(self) -> Path:
        """Meta's `consolidated.pth`, as the upstream repo names it."""
        return self.raw_checkpoint_dir / "consolidated.pth"

    @property
    def raw_params(self) -> Path:
        """Meta's upstream `params.json`."""
        return self.raw_checkpoint_dir / "params.json"

    @property
    def raw_hf_config(self) -> Path:
        """A Hugging Face checkpoint's upstream `config.json`."""
        return self.raw_checkpoint_dir / "config.json"

    @property
    def tokenizer_model(self) -> Path:
        return self.tokenizer_dir / "tokenizer.model"

    @property
    def tokenizer_config(self) -> Path:
        return self.tokenizer_dir / "tokenizer_config.json"

    @property
    def params(self) -> Path:
        """Meta-format architecture (`params.json`)."""
        return self.configs / "params.json"

    @property
    def adapter_config(self) -> Path:
        return self.configs / "meta_adapter.yaml"

    @property
    def hf_config(self) -> Path:
        """Hugging Face-format architecture (`config.json`)."""
        return self.configs / "config.json"

    def raw_file(self, relpath: str | PurePosixPath) -> Path:
        return self.raw / safe_relative(relpath)

    def file(self, relpath: str | PurePosixPath) -> Path:
        return self.root / safe_relative(relpath)

    def subdirs(self) -> list[Path]:
        return [self.root / sub for sub in MODEL_SUBDIRS]


@dataclass(frozen=True)
class DatasetPaths:
    name: str
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    @property
    def cache(self) -> Path:
        """Upstream downloads (e.g. Parquet) before they become raw JSONL; kept by `clean`."""
        return self.root / CACHE_DIR

    @property
    def source(self) -> Path:
        return self.raw / "SOURCE.json"

    @property
    def raw_checksums(self) -> Path:
        return self.stats / "raw_checksums.txt"

    @property
    def schema(self) -> Path:
        return self.processed / "schema.json"

    def raw_split(self, split: str) -> Path:
        return self.raw / f"{split}.jsonl"

    def split(self, split: str) -> Path:
        return self.processed / f"{split}.jsonl"

    def summary(self, day: dt.date) -> Path:
        return self.stats / f"{day.isoformat()}_summary.json"

    def summaries(self) -> list[Path]:
        """Dated summaries, oldest first (ISO dates sort as text)."""
        return sorted(self.stats.glob("????-??-??_summary.json"))

    def subdirs(self) -> list[Path]:
        return [self.root / sub for sub in DATASET_SUBDIRS]


@dataclass(frozen=True)
class RunFolder:
    """The files of a run folder, whatever made it (a trainer writing it, `--out`)."""

    root: Path

    @property
    def identity(self) -> Path:
        """`run.json`, the first file a run writes: which kind of run the folder holds
        (`storage.run_folder`)."""
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        """The lock a run holds while it writes the folder."""
        return self.root / ".run.lock"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / assets.SUMMARY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        """The trained weights: a model folder, a LoRA adapter, or a critic's weights."""
        return self.root / "final"

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"


@dataclass(frozen=True)
class RunPaths(RunFolder):
    """One instance of a `assets.RunKind`: a training run, a suite or an evaluation."""

    kind: assets.RunKind

    def missing(self) -> list[Path]:
        """The files that mark this kind complete and are not (yet) here."""
        return [self.root / f for f in self.kind.complete_when if not (self.root / f).exists()]

    @property
    def complete(self) -> bool:
        return not self.missing()


@dataclass(frozen=True)
class ComparisonFolder:
    """What `wmtp eval compare` writes: the comparison, its figure, and the evaluations it
    made itself (one folder per run and dataset)."""

    root: Path

    @property
    def json(self) -> Path:
        return self.root / "comparison.json"

    @property
    def markdown(self) -> Path:
        return self.root / "comparison.md"

    @property
    def figure(self) -> Path:
        return self.root / "pass_at_k.png"

    @property
    def evaluations(self) -> Path:
        return self.root / "eval"

    def name(self, path: Path) -> str:
        """`path` as the comparison names it: relative to its folder when inside it."""
        inside = path.is_relative_to(self.root)
        return path.relative_to(self.root).as_posix() if inside else str(path)

    def evaluation(self, position: int, label: str, dataset: str) -> Path:
        """The evaluation of the `position`-th run (from 1), `label` as its folder name."""
        return self.evaluations / f"{position}-{Path(label).name}" / dataset


SUITE_COMPARISON = "pass_at_k"  # the pass@k comparison's folder inside a suite's folder


@dataclass(frozen=True)
class SmallPaths:
    name: str
    root: Path

    def split(self, split: str) -> Path:
        return self.root / f"{split}_small.jsonl"


class Layout:
    """All paths of one storage root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.normpath(Path(root).expanduser().absolute()))

    @property
    def models_dir(self) -> Path:
        return self.root / "models_v2"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets_v2"

    @property
    def small_dir(self) -> Path:
        return self.root / "datasets_local_small"

    @property
    def manifest(self) -> Path:
        return self.root / "MANIFEST.json"

    @property
    def approvals(self) -> Path:
        return self.root / "APPROVALS.json"

    @property
    def backups(self) -> Path:
        """Verified copies of this storage: where, when, of which manifest."""
        return self.root / "BACKUPS.json"

    @property
    def readme(self) -> Path:
        return self.root / "README.md"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def runs_dir(self) -> Path:
        """What wmtp makes from the assets, one folder per run kind (`assets.RUN_KINDS`)."""
        return self.root / "runs"

    def runs_of(self, kind: str) -> Path:
        """The folder holding every run of `kind` made under this root."""
        return self.runs_dir / assets.run_kind(kind).name

    def run(self, kind: str, folder: Path) -> RunPaths:
        """The paths of the run of `kind` in `folder` (under `runs_of(kind)` or anywhere)."""
        return RunPaths(folder, assets.run_kind(kind))

    @property
    def eval_runs_dir(self) -> Path:
        """`wmtp eval run` outputs, one folder per model and run."""
        return self.runs_of(assets.EVAL_RESULTS)

    @property
    def comparisons_dir(self) -> Path:
        """`wmtp eval compare` outputs, one folder per comparison."""
        return self.runs_of(assets.COMPARISON)

    def suite_comparison(self, suite: Path) -> ComparisonFolder:
        """The pass@k comparison `wmtp train suite` writes into its folder."""
        return ComparisonFolder(suite / SUITE_COMPARISON)

    def evaluation_results(self) -> list[Path]:
        """The results.json of every evaluation under the runs folder: `wmtp eval run`'s and
        those comparisons made (standalone and a suite's), oldest first within each."""
        comparisons = [
            *self.comparisons_dir.glob("*"),
            *(self.suite_comparison(s).root for s in self.runs_of(assets.SUITE).glob("*")),
        ]
        return [
            *sorted(self.eval_runs_dir.glob(f"*/*/{RESULTS_FILE}")),
            *sorted(
                found
                for folder in comparisons
                for found in ComparisonFolder(folder).evaluations.glob(f"*/*/{RESULTS_FILE}")
            ),
        ]

    @property
    def state_dir(self) -> Path:
        """wmtp's own bookkeeping (build log, freshness store); not an asset."""
        return self.root / ".wmtp"

    @property
    def build_log(self) -> Path:
        return self.state_dir / "build_log.jsonl"

    @property
    def build_lock(self) -> Path:
        return self.state_dir / "build.lock"

    @property
    def freshness_store(self) -> Path:
        """Known file hashes and each asset's build and verification record (`stamps`)."""
        return self.state_dir / "freshness.json"

    @property
    def legacy_hash_cache(self) -> Path:
        """Where storages before the freshness store kept known hashes (read once)."""
        return self.state_dir / "hashes.json"

    @property
    def legacy_stamps_dir(self) -> Path:
        """Where storages before the freshness store kept verification stamps (read once)."""
        return self.state_dir / "verified"

    @property
    def last_verification(self) -> Path:
        """The latest `wmtp verify` result, which the reports cite."""
        return self.state_dir / "last_verification.json"

    @property
    def checksums(self) -> Path:
        """Every asset file's SHA-256 in `sha256sum -c` format, beside MANIFEST.json."""
        return self.root / "SHA256SUMS"

    def report(self, name: str) -> Path:
        return self.reports_dir / safe_relative(name)

    def model(self, name: str) -> ModelPaths:
        if name not in MODELS:
            raise WmtpError(f"unknown model {name!r}", hint=f"choose one of: {', '.join(MODELS)}")
        return ModelPaths(name, self.models_dir / name)

    def dataset(self, name: str) -> DatasetPaths:
        if name not in DATASETS:
            raise WmtpError(
                f"unknown dataset {name!r}", hint=f"choose one of: {', '.join(DATASETS)}"
            )
        return DatasetPaths(name, self.datasets_dir / name)

    def small(self, name: str) -> SmallPaths:
        self.dataset(name)  # validates the name
        return SmallPaths(name, self.small_dir / f"{name}_small")

    def sources(self) -> dict[str, Path]:
        """The SOURCE.json of every downloaded asset (what the download recorded), by name."""
        return {
            spec.name: self.model(spec.name).source
            if spec.is_model
            else self.dataset(spec.name).source
            for spec in assets.ASSETS
            if "download" in spec.build
        }

    def asset_dirs(self) -> list[Path]:
        """The top-level folders of the assets, which the storage owns (what `clean` removes)."""
        return [self.models_dir, self.datasets_dir, self.small_dir]

    def legacy_dirs(self) -> list[Path]:
        return [self.root / name for name in LEGACY_DIRS]

    def directories(self) -> list[Path]:
        """Every folder of the layout, parents before children."""
        dirs = [*self.asset_dirs()]
        for name in MODELS:
            model = self.model(name)
            dirs += [model.root, *model.subdirs()]
        for name in DATASETS:
            dataset = self.dataset(name)
            dirs += [dataset.root, *dataset.subdirs()]
        dirs += [self.small(name).root for name in DATASETS]
        return dirs

    def placeholder_files(self) -> list[Path]:
        """Files the layout creates empty: the large model's SHA256SUMS."""
        return [self.model(s.name).sha256sums for s in assets.MODEL_SPECS if s.keep_raw_on_clean]

    def protected_paths(self) -> list[Path]:
        """Paths `clean` never removes: an ongoing 7B download must survive a clean start."""
        return [
            self.model(s.name).raw_checkpoint_dir for s in assets.MODEL_SPECS if s.keep_raw_on_clean
        ]

    def contains(self, path: str | Path) -> bool:
        """Whether `path`, with symlinks resolved, lies inside the root."""
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def relative(self, path: Path) -> str:
        """`path` as a POSIX path relative to the root (how manifests and reports name files)."""
        return path.absolute().relative_to(self.root).as_posix()
