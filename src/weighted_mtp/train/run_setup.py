"""Run folders, the inputs a run trains on, and its logs.

A run lives in `<root>/runs/<experiment>/<run-id>/` (or `--out DIR`): `config.yaml` (the
effective configuration), `metrics.jsonl` (one line per step and per validation),
`checkpoints/step-N/`, `final/` (the trained weights as a model folder) and, when the run
completes, `summary.json`. Each experiment is a run kind of the registry
(`assets.RUN_KINDS`: which files mark a run complete, whether `final/` is a model) and the
layout names its paths (`Layout.runs_of`, `RunPaths`). Finding a finished run to evaluate
is the storage's (`storage.finished_runs`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import read_json_or_none
from weighted_mtp.storage.finished_runs import model_folder
from weighted_mtp.storage.layout import Layout, ModelPaths, RunFolder
from weighted_mtp.train.config import (
    Setting,
    TrainConfig,
    build_config,
    read_run_config,
    with_settings,
)


@dataclass(frozen=True)
class RunInputs:
    """What a run reads from the storage: the policy's folder and the data splits."""

    model: ModelPaths
    model_in_storage: bool
    train: Path
    validation: Path | None


def resolve_inputs(layout: Layout, model: str, data: str, small: bool) -> RunInputs:
    """`--model NAME|DIR` and `--data NAME` to paths, checked to exist and be prepared."""
    paths, in_storage = model_folder(layout, model)
    dataset = layout.dataset(data)
    if not dataset.summaries():
        raise WmtpError(
            f"dataset {data} is not prepared",
            path=dataset.processed,
            hint=f"run `wmtp data prepare {data}`"
            + (f" and `wmtp data small {data}`" if small else ""),
        )
    if small:
        small_paths = layout.small(data)
        train, validation = small_paths.split("train"), small_paths.split("validation")
        if not train.is_file():
            raise WmtpError(
                f"dataset {data} has no small training set",
                path=train,
                hint=f"run `wmtp data small {data}`",
            )
    else:
        train, validation = dataset.split("train"), dataset.split("validation")
        if not train.is_file():
            raise WmtpError(f"dataset {data} has no train split", path=train)
    return RunInputs(paths, in_storage, train, validation if validation.is_file() else None)


def require_verified_model(layout: Layout, inputs: RunInputs) -> None:
    """A storage model must pass `wmtp models verify` (its stamp, or a fresh check); a folder
    elsewhere is checked by the loader (tensor names, shapes, tokenizer)."""
    if not inputs.model_in_storage:
        return
    from weighted_mtp.models.verify import verify_model
    from weighted_mtp.storage.freshness import is_current

    paths = inputs.model
    if not paths.weights.is_file():
        raise WmtpError(
            f"model {paths.name} is not built",
            path=paths.weights,
            hint=f"run `wmtp models convert {paths.name}` (or `wmtp models micro {paths.name}`)",
        )
    if is_current(layout, paths.name):
        return
    report = verify_model(layout, paths.name)
    if not report.ok:
        first = report.failures()[0]
        raise WmtpError(
            f"model {paths.name} does not verify: {first.name}: {first.detail}",
            path=paths.root,
            hint=f"see `wmtp models verify {paths.name}`; rebuild it before training",
        )


def runs_dir(layout: Layout, experiment: str) -> Path:
    return layout.runs_of(experiment)


def new_run_dir(layout: Layout, experiment: str, model_name: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = runs_dir(layout, experiment) / f"{stamp}-{model_name}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def latest_run(layout: Layout, experiment: str) -> Path:
    """The most recently started run of `experiment` (for `--resume` without `--out`)."""
    folder = runs_dir(layout, experiment)
    runs = sorted(
        (p for p in folder.glob("*") if layout.run(experiment, p).config.is_file()),
        key=lambda p: p.name,
    )
    if not runs:
        raise WmtpError(
            f"no {experiment} run to resume", path=folder, hint="start one without --resume"
        )
    return runs[-1]


def manifest_hashes(layout: Layout, files: list[Path]) -> dict[str, str | None]:
    """Each file's SHA-256 as MANIFEST.json records it (None when it is not listed)."""
    manifest = read_json_or_none(layout.manifest, "MANIFEST.json")
    listed = {}
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), list):
        listed = {e.get("path"): e.get("sha256") for e in manifest["files"] if isinstance(e, dict)}
    result: dict[str, str | None] = {}
    for path in files:
        name = layout.relative(path) if layout.contains(path) else str(path)
        result[name] = listed.get(name)
    return result


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        raise WmtpError("no metrics.jsonl in this run folder", path=run_dir)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise WmtpError(f"line {number} of metrics.jsonl is not JSON", path=path) from None
    return records


def resolve_run(
    layout: Layout,
    experiment: str,
    *,
    small: bool,
    settings: Sequence[Setting],
    file: Path | None,
    out: Path | None,
    resume: bool,
) -> tuple[TrainConfig, Path | None]:
    """The run's config and folder. A new run: `config.build_config`. A resumed run keeps
    its saved config.yaml; settings may only repeat it."""
    if not resume:
        return build_config(experiment, small=small, settings=settings, file=file), out
    run_dir = out if out is not None else latest_run(layout, experiment)
    saved_path = RunFolder(run_dir).config
    if not saved_path.is_file():
        raise WmtpError(
            "nothing to resume: no config.yaml", path=run_dir, hint="start the run without --resume"
        )
    saved = read_run_config(saved_path)
    if saved.experiment != experiment:
        raise WmtpError(
            f"the run folder holds a {saved.experiment} run, not {experiment}",
            path=run_dir,
            hint=f"resume it with `wmtp train {saved.experiment} --resume`",
        )
    wanted = with_settings(saved, settings).to_dict()
    changed = [k for k, v in wanted.items() if saved.to_dict()[k] != v]
    if changed:
        raise WmtpError(
            f"a resumed run keeps its config; {', '.join(changed)} differ from it",
            path=saved_path,
            hint="drop those options, or start a new run",
        )
    return saved, run_dir
