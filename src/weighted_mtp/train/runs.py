"""Run folders, the assets a run trains on, and its logs.

A run lives in `<root>/runs/<experiment>/<run-id>/` (or `--out DIR`): `config.yaml` (the
effective configuration), `metrics.jsonl` (one line per step and per validation),
`checkpoints/step-N/`, `final/` (the trained weights as a model folder) and, when the run
completes, `summary.json`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import read_json_or_none, write_text
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths
from weighted_mtp.train.config import TrainConfig, read_run_config, with_overrides

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Assets:
    """What a run reads from the storage: the policy's folder and the data splits."""

    model: ModelPaths
    model_in_storage: bool
    train: Path
    validation: Path | None


def resolve_assets(layout: Layout, model: str, data: str, small: bool) -> Assets:
    """`--model NAME|DIR` and `--data NAME` to paths, checked to exist and be prepared.

    The one place that maps names to storage paths, to be switched to the typed asset
    registry when it lands.
    """
    if model in MODELS:
        paths, in_storage = layout.model(model), True
    elif Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().absolute()
        paths, in_storage = ModelPaths(folder.name, folder), False
    else:
        raise WmtpError(
            f"model {model!r} is neither a storage model nor a folder",
            hint=f"use one of {', '.join(MODELS)} or a model folder path",
        )
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
    return Assets(paths, in_storage, train, validation if validation.is_file() else None)


def require_verified_model(layout: Layout, assets: Assets) -> None:
    """A storage model must pass `wmtp models verify` (its stamp, or a fresh check); a folder
    elsewhere is checked by the loader (tensor names, shapes, tokenizer)."""
    if not assets.model_in_storage:
        return
    from weighted_mtp.models.verify import verify_model
    from weighted_mtp.storage.stamps import is_current

    paths = assets.model
    if not paths.weights.is_file():
        raise WmtpError(
            f"model {paths.name} is not built",
            path=paths.weights,
            hint=f"run `wmtp models convert {paths.name}` (or `wmtp models micro {paths.name}`)",
        )
    if is_current(layout, paths.root):
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
    return layout.root / RUNS_DIR / experiment


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
        (p for p in folder.glob("*") if (p / "config.yaml").is_file()), key=lambda p: p.name
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


class MetricsLog:
    """metrics.jsonl, appended and flushed line by line (rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rewind(self, step: int) -> None:
        """Drop lines after `step` (logged after the checkpoint a run resumes from)."""
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            if _step_of(line) <= step
        ]
        write_text(self.path, "".join(kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line is dropped


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
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
    fresh_config: Callable[[], TrainConfig],
    overrides: dict[str, Any],
    out: Path | None,
    resume: bool,
) -> tuple[TrainConfig, Path | None]:
    """The run's config and folder. A new run: `fresh_config()` with the overrides. A
    resumed run keeps its saved config.yaml; overrides may only repeat it."""
    if not resume:
        return with_overrides(fresh_config(), overrides, "options"), out
    run_dir = out if out is not None else latest_run(layout, experiment)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise WmtpError(
            "nothing to resume: no config.yaml", path=run_dir, hint="start the run without --resume"
        )
    saved = read_run_config(saved_path)
    wanted = with_overrides(saved, overrides, "options")
    changed = [k for k, v in wanted.to_dict().items() if saved.to_dict()[k] != v]
    if changed:
        raise WmtpError(
            f"a resumed run keeps its config; {', '.join(changed)} differ from it",
            path=saved_path,
            hint="drop those options, or start a new run",
        )
    return saved, run_dir
