"""The storage lock within one process, and which temporary files it clears."""

import os
import subprocess
import sys

import pytest

from weighted_mtp.storage.atomic import TEMP_MARKER, atomic_write, temp_prefix
from weighted_mtp.storage.lock import (
    lock_holder,
    remove_stale_temp_files,
    stale_temp_files,
    storage_lock,
    writing_to_storage,
)


def test_the_lock_is_reentrant_within_a_process_and_records_its_holder(layout):
    with storage_lock(layout, "wmtp demo"):
        assert lock_holder(layout) == f"`wmtp demo` (pid {os.getpid()})"
        with storage_lock(layout, "wmtp build"):
            assert lock_holder(layout) == f"`wmtp demo` (pid {os.getpid()})"
        assert lock_holder(layout).startswith("`wmtp demo`")
    assert lock_holder(layout) == "another wmtp process"  # released: nothing recorded


def test_temp_files_carry_the_writers_pid(layout):
    target = layout.dataset("mbpp").processed / "train.jsonl"
    with atomic_write(target, "wb") as handle:
        temp = [p.name for p in target.parent.iterdir() if TEMP_MARKER in p.name]
        assert len(temp) == 1 and temp[0].startswith(temp_prefix("train.jsonl"))
        handle.write(b"{}\n")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def temp_files(layout):
    folder = layout.model("micro-mtp").safetensors_dir
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    files = {
        "old_style": folder / f".model.safetensors{TEMP_MARKER}abc123",
        "dead_writer": folder / f".model.safetensors{TEMP_MARKER}{_dead_pid()}-x1",
        "this_process": layout.dataset("mbpp").processed / f".a{TEMP_MARKER}{os.getpid()}-x",
        "live_writer": folder / f".SHA256SUMS{TEMP_MARKER}{live.pid}-x2",
        "in_cache": layout.model("micro-mtp").cache / f".y{TEMP_MARKER}1-x",
        "partial": folder / "model.safetensors.incomplete",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    yield files
    live.kill()
    live.wait()


def test_only_stale_temp_files_are_removed_and_only_under_the_lock(layout, temp_files):
    stale = {"old_style", "dead_writer", "this_process"}
    assert set(stale_temp_files(layout)) == {temp_files[k] for k in stale}
    with pytest.raises(RuntimeError, match="needs the storage lock"):
        remove_stale_temp_files(layout)
    with writing_to_storage(layout, "wmtp data prepare") as removed:
        assert sorted(removed) == sorted(layout.relative(temp_files[k]) for k in stale)
    for key, path in temp_files.items():
        assert path.exists() == (key not in stale), key
