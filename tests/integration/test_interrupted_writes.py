"""A process killed mid-write leaves no half-written file under the final name."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


def test_crash_mid_write_never_exposes_partial_content(tmp_path: Path):
    """A process killed while writing leaves the final name absent, not half-written."""
    target = tmp_path / "big.bin"
    script = textwrap.dedent(f"""
        import sys, time
        from weighted_mtp.storage.atomic import atomic_write
        with atomic_write({str(target)!r}, "wb") as handle:
            handle.write(b"x" * 1_000_000)
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1_000_000  # only the temp
