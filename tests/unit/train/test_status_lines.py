"""What a training run shows while no step runs: a status line for each phase (loading,
validating, writing checkpoints and `final/`), through `progress.status`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.unit.train.test_trainer import config_of
from weighted_mtp import progress
from weighted_mtp.train.trainer import train


class Recorder:
    """A reporter that keeps the status lines shown, in order."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    @contextmanager
    def task(self, description: str, total: float | None, unit: str) -> Iterator[progress.Advance]:
        yield lambda _n: None

    @contextmanager
    def status(self, description: str) -> Iterator[None]:
        self.shown.append(description)
        yield


def test_every_phase_of_a_run_outside_its_steps_has_a_status_line(train_storage, tmp_path):
    recorder = Recorder()
    progress.use_reporter(recorder)
    try:
        config = config_of(max_steps=2, eval_every=1, checkpoint_every=2)
        assert train(train_storage, config, run_dir=tmp_path / "run").completed
    finally:
        progress.use_reporter(None)
    assert recorder.shown == [
        "checking the model and the data",
        "reading and tokenizing the data",
        "loading micro-mtp",
        "preparing the baseline objective",
        "validating on 1 batch(es)",  # after step 1
        "writing the checkpoint of step 2",
        "validating on 1 batch(es)",  # the last one
        "writing final/",
    ]
