"""A second `wmtp build` on a finished storage: how long the freshness answers take.

    uv run python benchmarks/second_build.py DEMO-ROOT [--runs 5]

Runs the build in-process (no interpreter start-up) on a storage where everything is current
and checks it changed nothing; the floor, measured in the same run, is one `stat` of every
file under the root: what any fingerprint comparison must do at least.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from weighted_mtp.catalog import load_catalog
from weighted_mtp.pipeline.build import build
from weighted_mtp.storage.layout import Layout


def _stat_everything(root: Path) -> int:
    count = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(folder, name))
            count += 1
    return count


def _timed(run, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    layout, catalog = Layout(args.root), load_catalog(None)

    def second_build() -> None:
        result = build(layout, catalog)
        if result.changed_anything:
            raise SystemExit("the storage was not finished: the build changed something")

    second_build()  # warm the page cache
    builds = _timed(second_build, args.runs)
    files = _stat_everything(args.root)
    floor = _timed(lambda: _stat_everything(args.root), args.runs)
    build_s, floor_s = statistics.median(builds), statistics.median(floor)
    print(f"files under the root: {files}")
    print(f"second build (in-process): median {build_s:.3f} s, min {min(builds):.3f} s")
    print(f"floor (stat every file):   median {floor_s:.4f} s")
    print(f"ratio build / floor: {build_s / floor_s:.0f}x")


if __name__ == "__main__":
    main()
