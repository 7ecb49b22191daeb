"""`wmtp --help` start-up against its floors, measured in the same run.

    uv run python benchmarks/cli_startup.py [--repeat N]

Times, in fresh processes, `python -c pass` (the interpreter), `python -c "import typer"`
(the floor: the CLI library itself), `.venv/bin/wmtp --help` and `uv run python -m
weighted_mtp --help`; prints the median wall and CPU seconds of each and the ratio to the
typer floor. Target: `wmtp --help` under 0.5 s wall. On a busy machine wall time is a
multiple of CPU time (other processes hold the cores); CPU time is what the command costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TARGET_S = 0.5


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    python = sys.executable
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import typer' (floor)": [python, "-c", "import typer"],
        "wmtp --help": [str(VENV_BIN / "wmtp"), "--help"],
        "uv run python -m weighted_mtp --help": [
            "uv",
            "run",
            "--frozen",
            "python",
            "-m",
            "weighted_mtp",
            "--help",
        ],
    }
    results = {}
    for _ in range(repeat):  # interleaved, so a burst of load hits every command alike
        for name, argv in commands.items():
            results.setdefault(name, []).append(timed(argv))
    floor = statistics.median(cpu for _, cpu in results["python -c 'import typer' (floor)"])
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {repeat} runs each")
    print(f"{'command':42} {'wall s':>8} {'cpu s':>8} {'cpu x floor':>12}")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:42} {wall:8.3f} {cpu:8.3f} {cpu / floor:12.2f}")
    best = min(w for w, _ in results["wmtp --help"])
    verdict = "meets" if best < TARGET_S else "misses"
    print(f"wmtp --help best wall {best:.3f} s: {verdict} the {TARGET_S} s target")


if __name__ == "__main__":
    main()
