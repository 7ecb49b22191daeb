"""Finding a training run's folder and what its `final/` holds, for anything that reads runs.

A run is named by its folder, `<experiment>/<run-id>` under the storage's runs folder, or a
bare run id found under exactly one experiment. A finished run has the files its run kind
marks complete (`assets.RUN_KINDS`) and a `final/` that is a model folder or a LoRA adapter
(peft's files) on the model it trained from. Only the run's identity is read from its
`config.yaml` (`experiment`, `model`); the trainer owns the rest of that file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weighted_mtp import assets
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths, RunFolder, RunPaths

# What a `final/` holds: a model folder (full or merged weights) or peft's adapter files.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
IDENTITY_KEYS = ("experiment", "model")  # what config.yaml says a run is and trained from


def model_folder(layout: Layout, model: str) -> tuple[ModelPaths, bool]:
    """`--model NAME|DIR` to its folder, and whether it is a storage model."""
    if model in MODELS:
        return layout.model(model), True
    if Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().absolute()
        return ModelPaths(folder.name, folder), False
    raise WmtpError(
        f"model {model!r} is neither a storage model nor a folder",
        hint=f"use one of {', '.join(MODELS)} or a model folder path",
    )


@dataclass(frozen=True)
class FinishedRun:
    """A completed training run whose `final/` is a generating model: a model folder, or a
    LoRA adapter (`adapter`) on `base`, the model the run trained from."""

    name: str  # as the user named it
    paths: RunPaths
    experiment: str
    base: ModelPaths
    base_in_storage: bool
    adapter: bool

    @property
    def final_model(self) -> ModelPaths:
        """`final/` as a model folder (full or merged weights; not an adapter)."""
        return ModelPaths(self.name, self.paths.final)


def find_run(layout: Layout, name: str) -> Path | None:
    """`name` as a training run folder: a path, `<experiment>/<run-id>` under the storage's
    runs folder, or a bare run id found under exactly one experiment; None if none is."""
    given = Path(name).expanduser()
    if RunFolder(given).config.is_file():
        return given.absolute()
    under_runs = layout.runs_dir / name
    if len(Path(name).parts) == 2 and RunFolder(under_runs).config.is_file():
        return under_runs
    found = [
        layout.runs_of(kind) / name
        for kind in assets.TRAINING_RUNS
        if len(Path(name).parts) == 1 and RunFolder(layout.runs_of(kind) / name).config.is_file()
    ]
    if len(found) > 1:
        raise WmtpError(
            f"run id {name!r} names runs of several experiments",
            hint="name it as <experiment>/<run-id>: "
            + ", ".join(layout.relative(f) for f in found),
        )
    return found[0] if found else None


def run_identity(folder: Path) -> tuple[str, str]:
    """(experiment, model) as the run's config.yaml records them, or one error."""
    import yaml

    path = RunFolder(folder).config
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WmtpError(f"cannot read the run's config ({type(exc).__name__})", path=path) from None
    values: list[str] = []
    for key in IDENTITY_KEYS:
        value = saved.get(key) if isinstance(saved, dict) else None
        if not isinstance(value, str) or not value:
            raise WmtpError(f"the run's config has no {key}", path=path, hint="is this a run?")
        values.append(value)
    return values[0], values[1]


def finished_run(layout: Layout, name: str, folder: Path) -> FinishedRun:
    """The training run in `folder`, complete and with a model in `final/`, or one error."""
    experiment, model = run_identity(folder)
    kind = assets.run_kind(experiment)
    paths = layout.run(kind.name, folder)
    if kind.role != "training" or not kind.final_model:
        models = [k.name for k in assets.RUN_KINDS if k.final_model]
        raise WmtpError(
            f"a {kind.name} run's final/ is not a model that generates",
            path=folder,
            hint=f"evaluate a {', '.join(models)} run",
        )
    missing = paths.missing()
    if missing:
        raise WmtpError(
            f"run {name} is unfinished (no {missing[0].relative_to(folder).as_posix()})",
            path=folder,
            hint="let it finish (baseline, verifiable and rho1 runs continue with "
            "--resume --out DIR), or evaluate a finished run",
        )
    adapter = (paths.final / ADAPTER_WEIGHTS).is_file()
    if not adapter and not ModelPaths(name, paths.final).weights.is_file():
        raise WmtpError(
            f"run {name} saved no final model (final/ holds neither weights nor an adapter)",
            path=paths.final,
            hint="train with final_save model, merged or adapter to evaluate the result",
        )
    base, in_storage = model_folder(layout, model)
    return FinishedRun(name, paths, kind.name, base, in_storage, adapter)
