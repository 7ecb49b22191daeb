"""Paths of the wrong shape and a Ctrl-C during `import torch`: one line, no traceback."""

import os
import subprocess
import sys

import pytest


def wmtp(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("storage", "init"),
        ("storage", "status"),
        ("storage", "clean", "--yes"),
        ("build", "--only", "init"),
        ("verify",),
        ("data", "validate"),
    ],
)
def test_a_root_that_is_a_file_is_one_line(tmp_path, args):
    root = tmp_path / "a-file"
    root.write_text("not a folder")
    line = _one_error_line(wmtp("--root", str(root), *args))
    assert "the storage root is not a folder" in line and str(root) in line


def _below_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    return tmp_path / "f" / "below"


def _file_as_models_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "models_v2").write_text("x")
    return tmp_path / "s"


@pytest.mark.parametrize(
    ("make", "args"),
    [
        (_below_a_file, ("storage", "init")),
        (_file_as_models_folder, ("storage", "init")),
        (_below_a_file, ("demo", "--root")),
    ],
)
def test_a_file_where_a_folder_belongs_is_one_line(tmp_path, make, args):
    root = make(tmp_path)
    argv = (*args, str(root)) if args[-1] == "--root" else ("--root", str(root), *args)
    line = _one_error_line(wmtp(*argv))
    assert "a file stands where a folder belongs" in line


@pytest.mark.usefixtures("sigint_default")
def test_ctrl_c_swallowed_during_import_torch_still_stops_the_demo(tmp_path):
    """A stand-in `torch` that does what torch's initialisation does to a Ctrl-C: the
    interrupt lands in Python code it calls and is caught there."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(2)\n"
        "except KeyboardInterrupt:\n"
        "    pass  # swallowed, as torch's optional-NumPy import does\n"
    )
    env = {**os.environ, "PYTHONPATH": str(fake)}
    out = wmtp("demo", "--root", str(tmp_path / "demo"), env=env)
    assert out.returncode == 130, out.stdout + out.stderr
    assert "interrupted" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "demo-mirror").exists()


@pytest.mark.parametrize("args", [("--device-memory", "nan"), ("--ranks", "1000000")])
def test_a_plan_of_an_impossible_device_or_rank_count_is_one_line(tmp_path, args):
    """A traceback (nan, 1e308) and minutes of tracing (a million ranks) before: now one
    line, before anything is read or traced, nothing written."""
    line = _one_error_line(wmtp("--root", str(tmp_path), "train", "plan", "baseline", *args))
    assert line.startswith(f"error: {args[0]}")
    assert list(tmp_path.iterdir()) == []
