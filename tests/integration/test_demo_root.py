"""`wmtp --root X demo` writes into X, as `wmtp demo --root X` does, and nowhere else."""

import os
import subprocess
import sys


def test_the_global_root_is_the_demos_root(tmp_path):
    # A stand-in torch that interrupts the demo as soon as it has taken its root's lock, so
    # the test sees where the demo writes without building anything.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise KeyboardInterrupt\n")
    work = tmp_path / "cwd"
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(tmp_path / "mine"), "demo"],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(fake), "WMTP_ROOT": str(tmp_path / "env")},
    )
    assert out.returncode == 130, out.stdout + out.stderr
    assert (tmp_path / "mine" / ".wmtp").is_dir()
    assert not (work / "demo-storage").exists() and not (tmp_path / "env").exists()
