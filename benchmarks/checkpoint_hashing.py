"""What checksumming a checkpoint costs: DCP's plain save (the floor) against the same save
with every file hashed as it is written (what `train.checkpoint` does), and against the
plain save followed by a second read to hash the files (what hashing as written avoids);
then the verification a resume does (one read of the checkpoint, `verify`).

    uv run python benchmarks/checkpoint_hashing.py [--size-mib 512] [--repeat 5] [--dir DIR]

Each repeat runs the three saves interleaved, in a fresh folder, and syncs before timing, so
no save pays for another's writeback. The re-read hashes from the page cache when it holds
the files (on this machine it does: the floor for a second read, not what a cluster file
system costs). Prints medians and ratios to the plain save."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.distributed.checkpoint import state_dict_saver
from torch.distributed.checkpoint.filesystem import FileSystemWriter

from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.train import checkpoint as ckpt


def state_of(size_mib: int) -> dict[str, torch.Tensor]:
    """Float32 tensors of 16 MiB each, `size_mib` in all (a model's and optimizer's shards)."""
    g = torch.Generator().manual_seed(0)
    n = max(1, size_mib // 16)
    return {f"t{i}": torch.randn(4 << 20, generator=g) for i in range(n)}


def plain(state: dict[str, torch.Tensor], folder: Path) -> None:
    state_dict_saver.save(state, storage_writer=FileSystemWriter(folder), no_dist=True)


def hashed_as_written(state: dict[str, torch.Tensor], folder: Path) -> None:
    writer, hashing = ckpt._hashing_writer(folder)
    state_dict_saver.save(state, storage_writer=writer, no_dist=True)
    ckpt._checksums(folder, hashing.hashed)


def plain_then_reread(state: dict[str, torch.Tensor], folder: Path) -> None:
    plain(state, folder)
    hash_all(folder)


def hash_all(folder: Path) -> None:
    """What verification reads: every file of the checkpoint, hashed."""
    for path in sorted(folder.iterdir()):
        sha256_file(path)


def timed(work: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) seconds of `work`."""
    os.sync()
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = state_of(args.size_mib)
    ways = {
        "plain": plain,
        "hashed as written": hashed_as_written,
        "plain + re-read": plain_then_reread,
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in [*ways, "verify"]}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for r in range(args.repeat):
            for name, way in ways.items():
                folder = Path(scratch) / f"{r}-{name.replace(' ', '_')}"
                times[name].append(timed(partial(way, state, folder)))
                if name == "hashed as written":
                    times["verify"].append(timed(partial(hash_all, folder)))
                shutil.rmtree(folder)
    wall_floor = statistics.median(t[0] for t in times["plain"])
    cpu_floor = statistics.median(t[1] for t in times["plain"])
    print(f"{args.size_mib} MiB, {args.repeat} repeats, load {os.getloadavg()[0]:.1f}")
    print(f"{'':18s} {'wall':>7s} {'x plain':>8s} {'CPU':>7s} {'x plain':>8s}")
    for name, values in times.items():
        wall = statistics.median(t[0] for t in values)
        cpu = statistics.median(t[1] for t in values)
        print(
            f"{name:18s} {wall:6.2f}s {wall / wall_floor:7.2f}x {cpu:6.2f}s {cpu / cpu_floor:7.2f}x"
        )


if __name__ == "__main__":
    main()
