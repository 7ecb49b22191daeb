"""Benchmark: `wmtp train suite --small` end to end, against its target and its Baseline.

    uv run python benchmarks/suite.py [--root STORAGE] [--out DIR]

Runs the whole comparison (Baseline, critic -> Verifiable Critic, ref-tune -> Rho-1) in a
child process on a storage with the micro assets (`--root`; default: a fresh `wmtp demo`
storage in a temporary folder, built before the clock starts). Reports the suite's wall
time and CPU time (user + sys of the child, all threads) against the target of 5 minutes
wall on 2 quiet cores, the load average around it (other jobs on a shared machine slow the
wall time, and inflate the CPU time by waiting threads), and each stage's wall and CPU time
from `comparison.json`, the policy runs also as a ratio to the Baseline run of the same
suite (the weighted ones with their stage 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_WALL_S = 300.0


def wmtp(*argv: str) -> list[str]:
    return [sys.executable, "-m", "weighted_mtp", *argv]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="storage with micro-mtp, micro-ref, small sets")
    parser.add_argument("--out", type=Path, help="suite folder (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wmtp-suite-bench-"))
    root = args.root
    if root is None:
        root = scratch / "demo"
        subprocess.run(wmtp("demo", "--root", str(root)), check=True, capture_output=True)
    out = args.out or scratch / "suite"

    load_before = os.getloadavg()[0]
    cpu_before, start = children_cpu_s(), time.perf_counter()
    subprocess.run(
        wmtp("--root", str(root), "train", "suite", "--small", "--out", str(out)),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu_before
    load_after = os.getloadavg()[0]

    comparison = json.loads((out / "comparison.json").read_text())
    print(f"suite folder: {out}")
    print(f"load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}")
    for name, stage in comparison["stages"].items():
        print(f"  {name:10s} wall {stage['wall_s']:7.1f} s   CPU {stage['cpu_s']:7.1f} s")
    baseline = comparison["experiments"]["baseline"]["wall_s"]
    for name, entry in comparison["experiments"].items():
        with_stage = entry.get("wall_s_with_stage_one", entry["wall_s"])
        print(
            f"  {name:10s} {with_stage:7.1f} s with its stage 1 = {with_stage / baseline:.2f}x "
            f"Baseline ({entry['tokens_trained']} tokens, {entry['steps']} steps)"
        )
    print(
        f"whole suite (process): wall {wall:.1f} s = {wall / TARGET_WALL_S:.2f}x the "
        f"{TARGET_WALL_S:.0f} s target; CPU (user + sys) {cpu:.1f} s "
        f"({cpu / wall:.2f} cores busy on average)"
    )


if __name__ == "__main__":
    main()
