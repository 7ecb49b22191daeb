"""What a training run shows: a status line for each phase outside the steps (loading,
validating, writing checkpoints and `final/`), through `progress.status`, and the steps as a
task whose note is the loss, through `progress.task`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.unit.train.test_trainer import config_of
from weighted_mtp import progress
from weighted_mtp.train.trainer import train


class Recorder:
    """A reporter that keeps the status lines shown, in order, and each task's advances."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.tasks: dict[str, list[tuple[float, str]]] = {}

    @contextmanager
    def task(self, description: str, total: float | None, unit: str) -> Iterator[progress.Advance]:
        advances = self.tasks.setdefault(f"{description} of {total} {unit}", [])
        yield lambda n, note="": advances.append((n, note))

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
    (start, _), *steps = recorder.tasks["train of 2 steps"]
    assert start == 0 and [n for n, _ in steps] == [1, 1]
    assert all(note.startswith("loss ") and note.endswith(" tok/s") for _, note in steps)
