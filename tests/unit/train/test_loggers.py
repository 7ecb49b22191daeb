"""Metric loggers: metrics.jsonl is the record, a chosen logger mirrors the same lines."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from tests.unit.train.test_trainer import config_of as fast_config
from weighted_mtp.errors import WmtpError
from weighted_mtp.train import loggers
from weighted_mtp.train.loggers import TensorBoardLogger, scalars
from weighted_mtp.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config_of(**over):
    """The trainer tests' fast micro config: two steps of one micro-batch, each validated."""
    return fast_config(**{"batch_size": 2, "max_steps": 2, "eval_every": 1, **over})


def lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def events(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_a_metrics_line_becomes_named_scalars():
    record = {
        "step": 3,
        "kind": "train",
        "loss": 1.5,
        "per_head": [1.0, 2.0],
        "weights": {"weight_mean": 0.9},
        "normalize": "count",
        "tokens": 12,
        "missing": None,
    }
    assert scalars(record) == {
        "train/loss": 1.5,
        "train/per_head/0": 1.0,
        "train/per_head/1": 2.0,
        "train/weights/weight_mean": 0.9,
        "train/tokens": 12.0,
    }


def test_tensorboard_mirrors_the_record(train_storage, tmp_path):
    run = tmp_path / "run"
    train(train_storage, config_of(logger="tensorboard"), run_dir=run)
    record = lines(run)
    mirrored = events(run / loggers.TENSORBOARD_DIR)
    for kind in ("train", "validation"):
        want = [(r["step"], r["loss"]) for r in record if r["kind"] == kind]
        got = mirrored[f"{kind}/loss"]
        assert [s for s, _ in got] == [s for s, _ in want] and want
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert "train/per_head/1" in mirrored and "train/grad_norm" in mirrored


def test_a_resumed_tensorboard_log_drops_what_followed_the_checkpoint(tmp_path):
    """Like metrics.jsonl, rewound to the step a run resumes from."""
    config = config_of()
    first = TensorBoardLogger(tmp_path, config, 0)
    for step in (1, 2, 3):
        first.log({"step": step, "kind": "train", "loss": float(step)})
    first.close()
    resumed = TensorBoardLogger(tmp_path, config, 1)
    resumed.log({"step": 2, "kind": "train", "loss": 20.0})
    resumed.close()
    assert events(tmp_path / loggers.TENSORBOARD_DIR)["train/loss"] == [(1, 1.0), (2, 20.0)]


class Recording:
    """An in-test logger: every line it is given, and whether it was closed."""

    made: ClassVar[list[Recording]] = []

    def __init__(self, run_dir, config, step) -> None:
        self.lines: list[dict] = []
        self.closed = False
        self.step = step
        Recording.made.append(self)

    def log(self, record):
        self.lines.append(record)

    def close(self):
        self.closed = True


def test_a_chosen_logger_gets_every_line_of_the_record(train_storage, tmp_path, monkeypatch):
    monkeypatch.setitem(loggers.MIRRORS, "wandb", Recording)
    monkeypatch.setitem(loggers.PACKAGES, "wandb", "json")  # "installed"
    Recording.made.clear()
    run = tmp_path / "run"
    train(train_storage, config_of(logger="wandb"), run_dir=run)
    (mirror,) = Recording.made
    assert mirror.lines == lines(run) and len(mirror.lines) == 4  # 2 train, 2 validation
    assert mirror.closed and mirror.step == 0


def test_a_logger_that_is_not_installed_is_one_line_before_the_run(
    train_storage, tmp_path, monkeypatch
):
    monkeypatch.setitem(loggers.PACKAGES, "mlflow", "no_such_package_for_wmtp")
    with pytest.raises(WmtpError, match="logger mlflow needs the no_such_package_for_wmtp") as e:
        train(train_storage, config_of(logger="mlflow"), run_dir=tmp_path / "run")
    assert "\n" not in e.value.line()
    assert not (tmp_path / "run").exists()
