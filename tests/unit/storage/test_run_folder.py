"""Which folders a run may write, its lock, and what it leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER, atomic_folder
from weighted_mtp.storage.layout import Layout, RunFolder
from weighted_mtp.storage.run_folder import claim_run_folder, read_identity

HOLDER = """
import sys, time
from pathlib import Path
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.run_folder import claim_run_folder
with claim_run_folder(
    Path(sys.argv[1]), "baseline", resume=False, command="wmtp train baseline",
    layout=Layout(sys.argv[2]),
):
    print("claimed", flush=True)
    time.sleep(120)
"""


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root` (not following symlinks): file bytes, link targets, folders."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = path.read_bytes()
    return found


def claim(folder: Path, kind: str = "baseline", resume: bool = False, storage: Path | None = None):
    """Claim `folder` with a storage root elsewhere (`storage`, or a fresh path)."""
    layout = Layout(storage if storage is not None else folder.parent / "elsewhere-storage")
    return claim_run_folder(
        folder, kind, resume=resume, command=f"wmtp train {kind}", layout=layout
    )


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A researcher's folder that is no run: notes, and names a run would write."""
    folder = tmp_path / "notes"
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "weights.bin").write_bytes(b"my weights")
    (folder / "summary.json").write_text('{"mine": true}\n')
    (folder / "metrics.jsonl").write_text("my own log\n")
    (folder / ".hidden.wmtp-tmp-1-partial").write_text("not wmtp's: the folder is not a run")
    return folder


def test_an_absent_folder_becomes_a_run_folder_marked_first(tmp_path):
    with claim(tmp_path / "runs" / "a") as root:
        assert root == (tmp_path / "runs" / "a").resolve()
        assert read_identity(root).kind == "baseline"
        assert sorted(os.listdir(root)) == [".run.lock", "run.json"]
        (root / "metrics.jsonl").write_text('{"step": 1}\n')
    assert json.loads((root / "run.json").read_text())["kind"] == "baseline"


def test_a_folder_that_is_no_run_is_refused_untouched(user_folder):
    before = snapshot(user_folder)
    for resume in (False, True):
        refusal = pytest.raises(WmtpError, match="not empty and holds no wmtp run")
        with refusal as error, claim(user_folder, resume=resume):
            pytest.fail("claimed")
        assert "\n" not in error.value.line()
    assert snapshot(user_folder) == before


def test_a_symlinked_folder_is_judged_by_its_target(tmp_path, user_folder):
    link = tmp_path / "link"
    link.symlink_to(user_folder)
    before = snapshot(user_folder)
    with pytest.raises(WmtpError, match="holds no wmtp run"), claim(link):
        pytest.fail("claimed")
    assert snapshot(user_folder) == before
    empty = tmp_path / "scratch"
    empty.mkdir()
    (tmp_path / "to-scratch").symlink_to(empty)
    with claim(tmp_path / "to-scratch") as root:
        assert root == empty.resolve()
    assert (tmp_path / "to-scratch").is_symlink() and (empty / "run.json").is_file()


def test_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(WmtpError, match="the run folder is a file"), claim(tmp_path / "out"):
        pytest.fail("claimed")
    assert (tmp_path / "out").read_text() == "x"


def test_only_a_run_of_the_same_kind_with_resume_continues(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(WmtpError, match="nothing to resume"), claim(folder, resume=True):
        pytest.fail("claimed")
    assert not folder.exists()
    with claim(folder):
        (folder / "config.yaml").write_text("experiment: baseline\n")
        (folder / "checkpoints" / "step-00000001").mkdir(parents=True)
    before = snapshot(folder)
    refusal = pytest.raises(WmtpError, match=r"already holds a baseline run.*add --resume")
    with refusal, claim(folder):
        pytest.fail("claimed")
    refusal = pytest.raises(WmtpError, match="holds a baseline run, not a critic run")
    with refusal, claim(folder, "critic", resume=True):
        pytest.fail("claimed")
    assert snapshot(folder) == before
    with claim(folder, resume=True) as root:
        assert root == folder.resolve()


def test_a_run_folder_from_before_run_json_resumes(tmp_path):
    folder = tmp_path / "old"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("experiment: baseline\n")
    with pytest.raises(WmtpError, match="holds no wmtp run"), claim(folder):
        pytest.fail("claimed")
    with claim(folder, resume=True):
        pass
    assert read_identity(folder).kind == "baseline"


def test_a_second_run_is_refused_naming_the_holder_until_it_dies(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(folder.parent / "elsewhere-storage")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        for resume in (False, True):
            with pytest.raises(WmtpError) as error, claim(folder, resume=resume):
                pytest.fail("claimed")
            assert error.value.line().startswith(
                f"another run is writing this run folder: `wmtp train baseline` (pid {holder.pid})"
            )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim(folder, resume=True) as root:  # the dead holder's lock is free
        assert f"{os.getpid()} wmtp train baseline" in RunFolder(root).lock.read_text()


def test_leftovers_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "run"
    with claim(folder):
        (folder / "config.yaml").write_text("experiment: baseline\n")
    checkpoints = folder / "checkpoints"
    kept = checkpoints / "step-00000001"
    kept.mkdir(parents=True)
    (kept / "__0_0.distcp").write_bytes(b"tensors")
    partial = checkpoints / f".step-00000002{TEMP_MARKER}partial"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")
    (folder / f".metrics.jsonl{TEMP_MARKER}99-abc").write_text("torn")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (folder / f".final{TEMP_MARKER}7-partial").symlink_to(outside)
    with claim(folder, resume=True):
        assert sorted(os.listdir(checkpoints)) == ["step-00000001"]
        assert sorted(os.listdir(folder)) == [".run.lock", "checkpoints", "config.yaml", "run.json"]
    assert (outside / "precious").read_text() == "keep"  # the link went, not its target


def test_a_fresh_run_that_fails_before_training_gives_its_folder_back(tmp_path):
    created = tmp_path / "new"
    with pytest.raises(RuntimeError), claim(created):
        (created / "config.yaml").write_text("experiment: baseline\n")
        (created / "checkpoints").mkdir()
        raise RuntimeError("the model did not load")
    assert not created.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError), claim(empty):
        raise RuntimeError("the model did not load")
    assert empty.is_dir() and not os.listdir(empty)
    trained = tmp_path / "trained"
    with pytest.raises(RuntimeError), claim(trained):
        (trained / "metrics.jsonl").write_text('{"step": 1}\n')
        raise RuntimeError("killed later")
    assert (trained / "metrics.jsonl").is_file() and read_identity(trained).kind == "baseline"


def test_an_atomic_folder_replaces_only_a_folder(tmp_path):
    target = tmp_path / "final"
    with atomic_folder(target) as tmp:
        assert TEMP_MARKER in tmp.name and tmp.parent == tmp_path
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["final"] and os.listdir(target) == ["a"]
    with atomic_folder(target) as tmp:
        (tmp / "b").write_text("2")
    assert os.listdir(tmp_path) == ["final"] and os.listdir(target) == ["b"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    target.rename(tmp_path / "old")
    target.symlink_to(outside)
    refusal = pytest.raises(WmtpError, match="final is not a folder this run wrote")
    with refusal, atomic_folder(target) as tmp:
        (tmp / "c").write_text("3")
    assert target.is_symlink() and os.listdir(outside) == ["precious"]
    assert sorted(os.listdir(tmp_path)) == ["final", "old", "outside"]


@pytest.mark.parametrize(
    "inside",
    [
        "models_v2/micro-mtp/run-x",  # trains into an asset: verify fails, approval goes stale
        "models",  # a new top-level folder: the layout check fails, clean would delete it
        ".",  # the root itself
        "runs",  # the runs folder itself
        "runs/baseline",  # a run kind's folder, not a run's
        "datasets_v2",
    ],
)
def test_a_folder_inside_the_storage_but_outside_its_runs_is_refused_untouched(tmp_path, inside):
    storage = tmp_path / "storage"
    (storage / "models_v2" / "micro-mtp").mkdir(parents=True)
    (storage / "models_v2" / "micro-mtp" / "metadata.json").write_text("{}\n")
    (storage / "runs").mkdir()
    before = snapshot(tmp_path)
    with (
        pytest.raises(WmtpError, match="inside the storage") as refused,
        claim(storage / inside, storage=storage),
    ):
        pytest.fail("the claim must be refused")
    assert "\n" not in str(refused.value) and "runs" in str(refused.value)
    assert snapshot(tmp_path) == before


def test_a_symlink_into_the_storage_is_judged_by_its_target(tmp_path):
    storage = tmp_path / "storage"
    (storage / "models_v2").mkdir(parents=True)
    (tmp_path / "link").symlink_to(storage / "models_v2")
    with (
        pytest.raises(WmtpError, match="inside the storage"),
        claim(tmp_path / "link" / "run-x", storage=storage),
    ):
        pytest.fail("the claim must be refused")
    assert not (storage / "models_v2" / "run-x").exists()


def test_a_run_under_the_storage_runs_folder_or_a_suite_inside_it_is_claimed(tmp_path):
    storage = tmp_path / "storage"
    for folder in (storage / "runs" / "baseline" / "mine", storage / "runs" / "suite" / "s" / "x"):
        with claim(folder, storage=storage) as root:
            assert root == folder
