"""Every command that writes to the storage refuses, in one line naming the running
process, while another wmtp holds the storage lock; a killed holder frees it."""

import os
import signal
import subprocess
import sys

import pytest

HOLDER = """
import sys, time
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.lock import storage_lock
with storage_lock(Layout(sys.argv[1]), "wmtp build"):
    print("locked", flush=True)
    time.sleep(3600)  # killed by the fixture: no deadline a loaded machine could reach
"""


def wmtp(root, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


@pytest.fixture
def held(layout):
    """A separate process holding the lock of an initialised storage with one asset file."""
    asset = layout.dataset("mbpp").processed / "train.jsonl"
    asset.write_text("{}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(layout.root)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    yield layout, holder, asset
    holder.kill()
    holder.wait()


@pytest.mark.parametrize(
    "args",
    [
        ("storage", "clean", "--yes"),
        ("storage", "init"),
        ("data", "prepare", "mbpp"),
        ("data", "download", "mbpp", "--mirror", "/nonexistent"),
        ("models", "verify", "micro-mtp"),
        ("build", "--only", "init"),
        ("verify",),
    ],
)
def test_writing_commands_refuse_naming_the_running_process(held, args):
    layout, holder, asset = held
    out = wmtp(layout.root, *args)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert f"`wmtp build` (pid {holder.pid})" in lines[0]
    assert "another wmtp process is writing to this storage" in lines[0]
    assert asset.read_text() == "{}\n"


def test_reading_commands_still_run(held):
    layout, _holder, _asset = held
    assert wmtp(layout.root, "storage", "status").returncode == 0
    listing = wmtp(layout.root, "storage", "clean")  # a listing deletes nothing
    assert listing.returncode == 0 and "would remove" in listing.stdout


def test_a_killed_holder_frees_the_lock_and_clean_then_works(held):
    layout, holder, asset = held
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    out = wmtp(layout.root, "storage", "clean", "--yes")
    assert out.returncode == 0, out.stderr
    assert not asset.exists()
