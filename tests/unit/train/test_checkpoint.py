"""Checkpoints: their SHA-256 taken as written, verification on resume, the fallback to the
newest good one, and pruning that never removes the last good checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import flip_byte
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.run_folder import claim_run_folder
from weighted_mtp.train import checkpoint as ckpt
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.lora import TrainedModel

SINGLE = Dist(rank=0, world=1, device=torch.device("cpu"))
GARBAGE = 64 << 10


def tiny(seed: int) -> tuple[TrainedModel, torch.optim.Optimizer]:
    """Two linear layers, every parameter trained and saved."""
    torch.manual_seed(seed)
    core = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64))
    model = TrainedModel(core)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.1)
    model.core(torch.randn(2, 64)).sum().backward()
    optimizer.step()  # AdamW's moments exist, so they are saved
    return model, optimizer


def save(run: Path, step: int, seed: int | None = None) -> Path:
    model, optimizer = tiny(step if seed is None else seed)
    state = ckpt.TrainerState(step, 10, step * 100, float(step), 1)
    return ckpt.save_checkpoint(run, state, model, optimizer, {}, SINGLE)


def loaded(path: Path) -> dict[str, torch.Tensor]:
    model, optimizer = tiny(999)
    ckpt.load_checkpoint(path, model, optimizer, {})
    return {k: v.clone() for k, v in model.core.state_dict().items()}


def garbage(path: Path, offset: int = 512) -> None:
    """64 KiB of random bytes written over `path` at `offset` (the file grows if short)."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(GARBAGE))


def unlist(folder: Path, name: str) -> None:
    """Drop `name`'s line from the checkpoint's SHA256SUMS (the file itself stays)."""
    manifest = folder / ckpt.MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(line for line in lines if not line.rstrip().endswith(name)))


def test_every_file_is_hashed_as_written_with_no_second_read(tmp_path, monkeypatch):
    def no_read(path: Path, **_: object) -> str:
        raise AssertionError(f"{path.name} was read again")

    monkeypatch.setattr(ckpt, "sha256_file", no_read)
    folder = save(tmp_path / "run", 3)
    monkeypatch.undo()
    sums = read_sha256sums(folder / ckpt.MANIFEST)
    files = sorted(p.name for p in folder.iterdir() if p.name != ckpt.MANIFEST)
    assert sorted(sums) == files == [".metadata", "__0_0.distcp", "trainer_state.json"]
    assert all(sums[name] == sha256_file(folder / name) for name in files)
    assert json.loads((folder / ckpt.STATE_FILE).read_text())["step"] == 3
    assert ckpt.verify(folder, SINGLE) is None


def test_a_file_written_with_a_seek_is_read_again(tmp_path):
    fs = ckpt._HashingFileSystem()
    with fs.create_stream(tmp_path / "plain", "wb") as stream:
        stream.write(b"abc" * 1000)
    with fs.create_stream(tmp_path / "sought", "wb") as stream:
        stream.write(b"abc" * 1000)
        stream.seek(10)
        stream.write(b"XYZ")
    assert sorted(fs.hashed) == ["plain"]
    sums = ckpt._checksums(tmp_path, fs.hashed)
    assert sums == {name: sha256_file(tmp_path / name) for name in ("plain", "sought")}


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda f: garbage(f / "__0_0.distcp"), "__0_0.distcp does not match its SHA-256"),
        (lambda f: os.truncate(f / "__0_0.distcp", 1000), "__0_0.distcp does not match"),
        (lambda f: (f / ".metadata").unlink(), ".metadata is missing"),
        (lambda f: flip_byte(f / ckpt.STATE_FILE, 20), "trainer_state.json does not match"),
        (lambda f: (f / ckpt.MANIFEST).unlink(), "SHA256SUMS is missing"),
        (lambda f: (f / ckpt.MANIFEST).write_text("nonsense\n"), "SHA256SUMS is unreadable"),
        (lambda f: unlist(f, "__0_0.distcp"), "SHA256SUMS does not list __0_0.distcp"),
        (lambda f: (f / "__1_0.distcp").write_bytes(b"x"), "does not list __1_0.distcp"),
    ],
    ids=[
        "garbage",
        "truncated",
        "no-metadata",
        "state",
        "no-manifest",
        "bad-manifest",
        "shard-unlisted",
        "extra-file",
    ],
)
def test_verification_names_the_damaged_file(tmp_path, damage, named):
    folder = save(tmp_path / "run", 1)
    damage(folder)
    assert named in ckpt.verify(folder, SINGLE)


def test_resume_falls_back_to_the_newest_good_checkpoint(tmp_path, caplog):
    run = tmp_path / "run"
    good = save(run, 1)
    want = loaded(good)
    bad = save(run, 2)
    garbage(bad / "__0_0.distcp")
    with caplog.at_level("INFO", logger="weighted_mtp"):
        assert ckpt.resume_point(run, SINGLE) == good
    [record] = [r for r in caplog.records if r.name.startswith("weighted_mtp")]
    line = record.getMessage()
    assert record.levelname == "WARNING"  # shown even with -q
    assert line.startswith("checkpoint step 2 is damaged")
    assert "__0_0.distcp" in line and "resuming from step 1" in line
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000001", "step-00000002.damaged"]  # kept, out of the list
    got = loaded(good)
    assert all(torch.equal(got[k], want[k]) for k in want)
    again = save(run, 2, seed=5)  # the step is written anew beside the damaged one
    assert ckpt.resume_point(run, SINGLE) == again


def test_when_no_checkpoint_verifies_resume_stops_changing_nothing(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        save(run, step)
    os.truncate(run / "checkpoints" / "step-00000001" / "__0_0.distcp", 100)
    (run / "checkpoints" / "step-00000002" / ".metadata").unlink()
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(WmtpError, match="no checkpoint of this run verifies") as error:
        ckpt.resume_point(run, SINGLE)
    assert "step 2: .metadata is missing" in error.value.line()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert ckpt.resume_point(tmp_path / "fresh", SINGLE) is None


def test_pruning_keeps_the_last_checkpoint_whose_checksums_are_complete(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save(run, 1)
    unsealed = save(run, 2)
    (unsealed / ckpt.MANIFEST).unlink()  # as a checkpoint written before checksums
    ckpt.prune_checkpoints(run, 1, SINGLE)
    assert [p.name for p in ckpt.completed_checkpoints(run)] == ["step-00000001", "step-00000002"]
    save(run, 3)

    def killed(path: Path, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # a kill in the middle of removing the oldest

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(run, 1, SINGLE)
    monkeypatch.undo()
    assert [p.name for p in ckpt.completed_checkpoints(run)] == ["step-00000002", "step-00000003"]
    leftover = run / "checkpoints" / f".step-00000001{TEMP_MARKER}pruned"
    assert leftover.is_dir()  # never listed; the next run's claim removes it
    (run / "config.yaml").write_text("experiment: baseline\n")
    layout = Layout(run.parent / "storage")
    with claim_run_folder(run, "baseline", resume=True, command="test", layout=layout) as root:
        assert not leftover.exists()
        ckpt.prune_checkpoints(root, 1, SINGLE)
    assert [p.name for p in ckpt.completed_checkpoints(run)] == ["step-00000003"]


def test_a_checkpoint_that_omits_a_damaged_shard_from_its_sums_is_not_resumed(tmp_path, caplog):
    """The shard is garbage and unlisted: only a list of every held file catches it."""
    run = tmp_path / "run"
    good = save(run, 1)
    bad = save(run, 2)
    garbage(bad / "__0_0.distcp")
    unlist(bad, "__0_0.distcp")
    with caplog.at_level("INFO", logger="weighted_mtp"):
        assert ckpt.resume_point(run, SINGLE) == good
    [record] = [r for r in caplog.records if r.name.startswith("weighted_mtp")]
    assert "SHA256SUMS does not list __0_0.distcp" in record.getMessage()


@pytest.mark.parametrize("kind", ["file", "symlink", "other-file"])
def test_a_non_folder_in_checkpoints_is_one_error_naming_it(tmp_path, kind):
    run = tmp_path / "run"
    save(run, 1)
    folder = run / "checkpoints"
    name = "notes.txt" if kind == "other-file" else "step-00000002"
    if kind == "symlink":
        (folder / name).symlink_to(folder / "step-00000001")
    else:
        (folder / name).write_text("not a checkpoint")
    before = sorted(p.name for p in folder.iterdir())
    for call in (ckpt.completed_checkpoints, lambda r: ckpt.resume_point(r, SINGLE)):
        with pytest.raises(WmtpError, match=f"checkpoints/{name} is a") as error:
            call(run)
        assert "\n" not in error.value.line() and str(folder / name) in error.value.line()
    assert sorted(p.name for p in folder.iterdir()) == before
