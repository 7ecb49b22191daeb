"""Run folders as a user meets them on the command line: a folder that is no run, a
symlink, a second run at once, a run killed mid-checkpoint whose last checkpoint is then
damaged, a mistyped record. Each refusal is one line and loses nothing; a resume starts
from the last good checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import run_wmtp, wmtp_command
from weighted_mtp.storage.atomic import TEMP_MARKER

OPTIONS = [
    "train", "baseline", "--small", "--set", "batch_size=4", "--set", "micro_batch_size=2",
    "--set", "eval_every=0", "--set", "eval_batches=1", "--set", "checkpoint_every=1",
    "--set", "keep_checkpoints=2",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def baseline(out: Path, steps: int, *extra: str) -> list[str]:
    return [*OPTIONS, "--max-steps", str(steps), "--out", str(out), *extra]


def start(args: list[str], root: Path) -> subprocess.Popen[str]:
    """`wmtp --root ROOT ARGS` started in the background (its output piped)."""
    return subprocess.Popen(
        wmtp_command(*args, root=root),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints (and nothing else on stderr)."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


def tree(root: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def train_steps(run: Path) -> list[int]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["kind"] == "train"]


def test_a_folder_that_is_no_run_and_a_link_to_it_are_refused_untouched(train_storage, tmp_path):
    notes = tmp_path / "notes"
    (notes / "final").mkdir(parents=True)
    (notes / "final" / "weights.bin").write_bytes(b"my weights")
    (notes / "summary.json").write_text('{"mine": true}\n')
    (notes / "metrics.jsonl").write_text("my own log\n")
    (tmp_path / "link").symlink_to(notes)
    before = tree(notes)
    for out in (notes, tmp_path / "link"):
        line = error_line(run_wmtp(*baseline(out, 2), root=train_storage.root))
        assert "holds no wmtp run" in line and str(notes) in line
    assert tree(notes) == before


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` with its size and modification time (nothing read)."""
    return {
        p.relative_to(root).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if not p.is_dir()
    }


def test_an_out_inside_the_storage_but_not_under_its_runs_is_refused_untouched(train_storage):
    """`--out` into an asset would fail `wmtp verify` and stale the approval; a new folder
    at the root would fail its layout check (and `storage clean` would delete the run)."""
    root = train_storage.root
    before = listing(root)
    for out in (root / "models_v2" / "micro-mtp" / "run-x", root / "models", root / "runs"):
        line = error_line(run_wmtp(*baseline(out, 1), root=root))
        assert "inside the storage" in line and str(out) in line
        assert not out.exists() or out == root / "runs"
    assert listing(root) == before


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(train_storage, tmp_path):
    run = tmp_path / "run"
    first = start(baseline(run, 6), train_storage.root)
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").is_file() or not train_steps(run):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # mid-run, however fast this machine trains
        for extra in ((), ("--resume",)):
            second = run_wmtp(*baseline(run, 6, *extra), root=train_storage.root)
            holder = f"`wmtp train baseline` (pid {first.pid})"
            assert f"another run is writing this run folder: {holder}" in error_line(second)
        first.send_signal(signal.SIGCONT)
        err = first.communicate(timeout=600)[1]
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err[-2000:]
    assert train_steps(run) == [1, 2, 3, 4, 5, 6]  # each step logged once


def stop_mid_checkpoint(child: subprocess.Popen[str], checkpoints: Path) -> str:
    """Freeze `child` while a checkpoint is being written (its temporary folder exists)
    with two complete ones beside it; the temporary folder's name."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        partial = [p.name for p in checkpoints.glob(f".*{TEMP_MARKER}*")]
        if partial and len(list(checkpoints.glob("step-*"))) >= 2:
            child.send_signal(signal.SIGSTOP)
            if (checkpoints / partial[0]).exists():
                return partial[0]
            child.send_signal(signal.SIGCONT)  # it finished meanwhile: catch the next one
        time.sleep(0.001)
    pytest.fail(f"no checkpoint was caught being written: {child.stderr.read()[-2000:]}")


def test_killed_mid_checkpoint_with_the_last_one_damaged_resumes_from_the_good_one(
    train_storage, tmp_path
):
    import torch

    from weighted_mtp.train import checkpoint as ckpt
    from weighted_mtp.train.distributed import Dist

    run = tmp_path / "run"
    child = start(baseline(run, 5), train_storage.root)
    try:
        partial = stop_mid_checkpoint(child, run / "checkpoints")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert (run / "checkpoints" / partial).is_dir()  # killed with the checkpoint half-written
    newest = ckpt.completed_checkpoints(run)[-1]
    with (newest / "__0_0.distcp").open("r+b") as handle:  # and the last good one damaged
        handle.seek(256)
        handle.write(os.urandom(64 << 10))

    resumed = run_wmtp(*baseline(run, 5, "--resume"), root=train_storage.root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "run complete: 5 steps" in resumed.stdout
    notes = [line for line in resumed.stderr.splitlines() if line.startswith("warning: ")]
    assert len(notes) == 1 and f"checkpoint step {ckpt.step_of(newest)} is damaged" in notes[0]
    assert "__0_0.distcp does not match its SHA-256" in notes[0]
    assert train_steps(run) == [1, 2, 3, 4, 5]
    assert not [p for p in run.rglob("*") if TEMP_MARKER in p.name]
    single = Dist(0, 1, torch.device("cpu"))
    assert all(ckpt.verify(p, single) is None for p in ckpt.completed_checkpoints(run))
    assert (newest.with_name(newest.name + ".damaged")).is_dir()


def test_a_string_is_correct_is_one_line_naming_file_and_line(train_storage, tmp_path):
    from weighted_mtp.storage.layout import Layout

    shutil.copytree(train_storage.root, tmp_path / "storage", symlinks=True)
    split = Layout(tmp_path / "storage").small("codecontests").split("train")
    lines = split.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[0])
    record["metadata"]["is_correct"] = "false"
    lines[0] = json.dumps(record) + "\n"
    split.write_text("".join(lines), encoding="utf-8")
    line = error_line(run_wmtp(*baseline(tmp_path / "run", 2), root=tmp_path / "storage"))
    assert line.startswith("error: line 1: metadata.is_correct is a string, not a boolean")
    assert str(split) in line
    assert not (tmp_path / "run").exists()
