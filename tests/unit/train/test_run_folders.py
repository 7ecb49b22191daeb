"""A training run and its folder: refused folders stay as they were, a damaged checkpoint
falls back to the last good one and the run ends as if nothing happened, mistyped records
are refused naming file and line."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.unit.train.test_trainer import config_of as fast_config
from weighted_mtp.errors import WmtpError
from weighted_mtp.train.config import Setting, build_config
from weighted_mtp.train.trainer import train


def config_of(**over):
    """The trainer tests' fast micro config, with a checkpoint at every step."""
    return fast_config(**{"checkpoint_every": 1, "keep_checkpoints": 2, **over})


def train_lines(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in lines if r["kind"] == "train"]


def final_tensors(run):
    from safetensors.torch import load_file

    return load_file(run / "final" / "safetensors" / "model.safetensors")


def test_a_folder_that_is_no_run_is_left_as_it_was(train_storage, tmp_path):
    notes = tmp_path / "notes"
    (notes / "final").mkdir(parents=True)
    (notes / "final" / "weights.bin").write_bytes(b"mine")
    (notes / "metrics.jsonl").write_text("my log\n")
    with pytest.raises(WmtpError, match="holds no wmtp run"):
        train(train_storage, config_of(), run_dir=notes)
    assert sorted(p.name for p in notes.rglob("*")) == ["final", "metrics.jsonl", "weights.bin"]
    assert (notes / "metrics.jsonl").read_text() == "my log\n"


def test_a_damaged_newest_checkpoint_resumes_from_the_last_good_one(
    train_storage, tmp_path, caplog
):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(train_storage, config_of(), run_dir=whole)
    train(train_storage, config_of(), run_dir=parts, stop_at=2)
    damaged = parts / "checkpoints" / "step-00000002" / "__0_0.distcp"
    with damaged.open("r+b") as handle:  # 64 KiB of garbage, as a failing disk writes it
        handle.seek(256)
        handle.write(os.urandom(64 << 10))
    with caplog.at_level("INFO", logger="weighted_mtp"):
        result = train(train_storage, config_of(), run_dir=parts, resume=True)
    ours = [r for r in caplog.records if r.name.startswith("weighted_mtp")]
    note = [r.getMessage() for r in ours if r.levelname == "WARNING"]
    assert len(note) == 1 and "checkpoint step 2 is damaged: __0_0.distcp" in note[0]
    assert "resuming from step 1" in note[0]
    assert result.completed and result.final_loss is not None
    assert train_lines(parts) == train_lines(whole)
    a, b = final_tensors(whole), final_tensors(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    names = sorted(p.name for p in (parts / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000002.damaged", "step-00000003"]


def test_a_run_with_no_good_checkpoint_stops_in_one_line(train_storage, tmp_path):
    run = tmp_path / "run"
    train(train_storage, config_of(keep_checkpoints=1), run_dir=run, stop_at=2)
    (run / "checkpoints" / "step-00000002" / ".metadata").unlink()
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(
        WmtpError, match=r"no checkpoint of this run verifies.*\.metadata is missing"
    ):
        train(train_storage, config_of(keep_checkpoints=1), run_dir=run, resume=True)
    assert sorted(p.name for p in run.rglob("*")) == before


@pytest.fixture
def mistyped_storage(weighted_storage, tmp_path):
    """A copy of the storage whose small training split says `"is_correct": "false"` where
    the first incorrect solution is; with the line number."""
    from weighted_mtp.storage.layout import Layout

    shutil.copytree(weighted_storage.root, tmp_path / "storage", symlinks=True)
    layout = Layout(tmp_path / "storage")
    split = layout.small("codecontests").split("train")
    lines = split.read_text(encoding="utf-8").splitlines(keepends=True)
    index = next(i for i, x in enumerate(lines) if not json.loads(x)["metadata"]["is_correct"])
    record = json.loads(lines[index])
    record["metadata"]["is_correct"] = "false"
    lines[index] = json.dumps(record) + "\n"
    split.write_text("".join(lines), encoding="utf-8")
    return layout, split, index + 1


@pytest.mark.parametrize("experiment", ["baseline", "critic"])
def test_a_string_is_correct_is_refused_naming_file_and_line(
    mistyped_storage, tmp_path, experiment
):
    layout, split, number = mistyped_storage
    run = tmp_path / "run"
    config = build_config(experiment, small=True, settings=[Setting("max_steps", 1)])
    with pytest.raises(WmtpError) as error:
        train(layout, config, run_dir=run)
    line = error.value.line()
    assert line.startswith(f"line {number}: metadata.is_correct is a string, not a boolean")
    assert str(split) in line
    assert not run.exists()  # the run made nothing: its folder is given back
