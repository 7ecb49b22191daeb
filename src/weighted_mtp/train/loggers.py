"""Metric loggers: `metrics.jsonl` is the run's record; `logger:` mirrors it elsewhere.

Every train and validation line goes to `metrics.jsonl` (appended and flushed line by line,
rewound to the checkpoint a run resumes from). `--set logger=tensorboard` (or `wandb`,
`mlflow`) also sends each line's numbers to that tool, named `<kind>/<key>`
(`train/loss`, `train/per_head/0`, `train/weights/weight_mean`, `validation/loss`) at the
line's step. None of the three is a dependency of wmtp: choosing one that is not installed
is one error before the run starts. Only global rank 0 logs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import write_text
from weighted_mtp.storage.layout import RunFolder
from weighted_mtp.train.config import TrainConfig

TENSORBOARD_DIR = "tensorboard"  # in the run folder
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
PROJECT = "weighted-mtp"  # the wandb project and the mlflow experiment


class MetricLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """One metrics line: `step`, `kind` (train or validation) and its values."""
        ...

    def close(self) -> None: ...


class MetricsLog:
    """metrics.jsonl, appended and flushed line by line: the record of a run."""

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

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Every line is on disk already."""


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line is dropped


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics line's numbers as `<kind>/<key>` (lists by index, dicts by key)."""

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            if math.isfinite(value):
                yield prefix, float(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(f"{prefix}/{key}", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(f"{prefix}/{index}", item)

    kind = record.get("kind", "train")
    values = {k: v for k, v in record.items() if k not in ("step", "kind")}
    return dict(walk(str(kind), values))


def flat_config(config: TrainConfig) -> dict[str, Any]:
    """The config as `key` / `section.key` parameters."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


class TensorBoardLogger:
    """Event files in `<run>/tensorboard/`; a resumed run purges the events after its
    checkpoint, as metrics.jsonl drops those lines."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = str(run_dir / TENSORBOARD_DIR)
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=step + 1 if step else None)

    def log(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run named after the run folder (resumed with it)."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int) -> None:
        import wandb

        self.run = wandb.init(
            project=PROJECT,
            name=run_dir.name,
            id=run_dir.name,
            resume="allow",
            dir=str(run_dir),
            config=config.to_dict(),
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """An MLflow run named after the run folder, with the config as its parameters."""

    def __init__(self, run_dir: Path, config: TrainConfig, step: int) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(PROJECT)
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(flat_config(config))

    def log(self, record: dict[str, Any]) -> None:
        self.mlflow.log_metrics(scalars(record), step=record["step"])

    def close(self) -> None:
        self.mlflow.end_run()


MIRRORS: dict[str, Callable[[Path, TrainConfig, int], MetricLogger]] = {
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
    "mlflow": MlflowLogger,
}


def require_logger(config: TrainConfig) -> None:
    """The chosen logger's package is installed, or one error before the run starts."""
    package = PACKAGES.get(config.logger)
    if package is not None and importlib.util.find_spec(package) is None:
        raise WmtpError(
            f"logger {config.logger} needs the {package} package, which is not installed",
            hint=f"install it (pip install {package}) or drop --set logger={config.logger}",
        )


@dataclass
class Loggers:
    """metrics.jsonl and the chosen mirror, fed the same lines."""

    record: MetricsLog
    mirrors: Sequence[MetricLogger] = ()

    def log(self, line: dict[str, Any]) -> None:
        self.record.log(line)
        for mirror in self.mirrors:
            mirror.log(line)

    def close(self) -> None:
        for mirror in self.mirrors:
            mirror.close()


def open_loggers(config: TrainConfig, run_dir: Path, step: int) -> Loggers:
    """The loggers of a run starting (or resuming) at `step` (global rank 0): what was
    logged after that step is dropped."""
    record = MetricsLog(RunFolder(run_dir).metrics)
    record.rewind(step)
    mirror = MIRRORS.get(config.logger)
    return Loggers(record, [mirror(run_dir, config, step)] if mirror else [])
