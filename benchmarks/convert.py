"""Benchmark: streaming conversion vs the naive method vs the I/O floor.

    uv run python benchmarks/convert.py --size-gb 1.5

Builds a synthetic Meta-format checkpoint (bfloat16, real tensor names, random values) of
about the given size, "downloads" it from a local mirror into a scratch storage root, then
measures, each in its own process:

- floor: `cp` of the checkpoint plus a SHA-256 of the same bytes (the I/O any converter
  that writes and hashes a same-sized output must do); also shown with `dd bs=8M
  conv=fsync` instead of `cp`, a copy through user space that is synced like wmtp's output;
- wmtp: `convert_model(..., dtype="float16")` (streaming, hashed while writing);
- naive: the textbook snippet, `torch.load` everything then `safetensors.torch.save_file`, with
  the float16 cast it asks for and the SHA-256 it takes afterwards.

Memory is peak RssAnon (anonymous memory: what must fit in RAM; file pages of an mmap do not
count) minus the peak of a bare `import torch` process. Wall times are taken inside each
process around the work itself, so interpreter start-up does not count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _measure import rss_anon_kib

BENCH_DIM, BENCH_HEADS, BENCH_FUTURE = 2048, 16, 4

CHILD_WMTP = """
import json, sys, time
import torch  # imported before the clock starts, as in the naive child
from weighted_mtp.models.convert import convert_model
from weighted_mtp.storage.layout import Layout
start = time.perf_counter()
convert_model(Layout(sys.argv[1]), "meta-llama-mtp", dtype="float16")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

CHILD_NAIVE = """
import hashlib, json, sys, time
import torch
from safetensors.torch import save_file
start = time.perf_counter()
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
state = {name: tensor.to(torch.float16) for name, tensor in state.items()}
save_file(state, sys.argv[2], metadata={"dtype": "float16"})
digest = hashlib.sha256()
with open(sys.argv[2], "rb") as handle:
    while chunk := handle.read(8 << 20):
        digest.update(chunk)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

CHILD_BARE = "import time, torch; time.sleep(0.3)"

CHILD_HASHLIB = """
import json, sys, time
from weighted_mtp.storage.hashing import sha256_file
start = time.perf_counter()
sha256_file(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def settle(*outputs: Path) -> None:
    """Remove the previous run's output and flush dirty pages, so that no run pays for
    freeing or writing back another run's file."""
    for output in outputs:
        output.unlink(missing_ok=True)
    os.sync()


def run_measured(args: list[str], *outputs: Path) -> tuple[dict, float, int]:
    """Run a process; returns (its JSON output, wall seconds, peak RssAnon in bytes)."""
    settle(*outputs)
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            kib = rss_anon_kib(child.pid)
            if kib:
                peak[0] = max(peak[0], kib)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    sampler.join()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{args[:3]} failed:\n{err}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, peak[0] * 1024


def best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def timed(args: list[str], *outputs: Path) -> float:
    settle(*outputs)
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_params(size_bytes: int, vocab: int) -> dict:
    """A Meta MTP params.json of about `size_bytes` in bfloat16 (dim 2048, 16 heads)."""
    from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes

    def params(n_layers: int) -> dict:
        return {
            "dim": BENCH_DIM,
            "n_layers": n_layers,
            "n_heads": BENCH_HEADS,
            "vocab_size": vocab,
            "multiple_of": 256,
            "ffn_dim_multiplier": 1.0,
            "norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "n_future_tokens": BENCH_FUTURE,
        }

    def size(n_layers: int) -> int:
        shapes = meta_tensor_shapes(MetaParams.from_dict(params(n_layers)))
        return 2 * sum(math.prod(s) for s in shapes.values())

    n_layers = BENCH_FUTURE
    while abs(size(n_layers + 1) - size_bytes) < abs(size(n_layers) - size_bytes):
        n_layers += 1
    return params(n_layers)


def prepare(work: Path, size_gb: float) -> tuple[Path, Path]:
    """A storage root with the synthetic checkpoint downloaded; returns (root, checkpoint)."""
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.models.tokenizer import tokenizer_facts
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout
    from weighted_mtp.synthetic.llama_tokenizer import train_llama_style_tokenizer
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    tokenizer = train_llama_style_tokenizer(work / "tokenizer.model")
    params = bench_params(int(size_gb * 1e9), tokenizer_facts(tokenizer).vocab_size)
    mirror = write_meta_mirror(work / "mirror", tokenizer_model=tokenizer, params=params)
    layout = Layout(work / "storage")
    init_storage(layout)
    download_model(layout, load_catalog(), "meta-llama-mtp", mirror=mirror)
    shutil.rmtree(mirror)
    checkpoint = layout.model("meta-llama-mtp").raw_checkpoint_dir / "consolidated.pth"
    return layout.root, checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.5, help="checkpoint size (GB)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per method; the fastest counts (shared machines are noisy)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wmtp-bench-", dir=args.workdir))
    try:
        root, checkpoint = prepare(work, args.size_gb)
        size = checkpoint.stat().st_size
        print(
            f"checkpoint: {size / 1e9:.2f} GB bfloat16; best of {args.repeat} runs; "
            "memory: the largest peak",
            flush=True,
        )
        python = sys.executable
        subprocess.run(["cat", str(checkpoint)], stdout=subprocess.DEVNULL, check=True)
        copy = work / "copy.pth"
        floor_cp = best(args.repeat, lambda: timed(["cp", str(checkpoint), str(copy)], copy))
        # cp may copy inside the kernel (copy_file_range); a converter must write its bytes
        floor_dd = best(
            args.repeat,
            lambda: timed(
                ["dd", f"if={checkpoint}", f"of={copy}", "bs=8M", "conv=fsync", "status=none"], copy
            ),
        )
        copy.unlink()
        coreutils_sha = best(args.repeat, lambda: timed(["sha256sum", str(checkpoint)]))
        hashlib_sha = best(
            args.repeat,
            lambda: run_measured([python, "-c", CHILD_HASHLIB, str(checkpoint)])[0]["seconds"],
        )
        floor_sha = min(coreutils_sha, hashlib_sha)  # the faster one: a conservative floor
        floor = floor_cp + floor_sha
        _, _, bare = run_measured([python, "-c", CHILD_BARE])
        from weighted_mtp.storage.layout import Layout

        converted = Layout(root).model("meta-llama-mtp").weights
        wmtp = [
            run_measured([python, "-c", CHILD_WMTP, str(root)], converted)
            for _ in range(args.repeat)
        ]
        naive_out = work / "naive.safetensors"
        naive = [
            run_measured([python, "-c", CHILD_NAIVE, str(checkpoint), str(naive_out)], naive_out)
            for _ in range(args.repeat)
        ]
        rows = [
            ("floor (cp + SHA-256)", floor, None),
            ("dd conv=fsync + SHA-256", floor_dd + floor_sha, None),
        ] + [
            (name, min(r[0]["seconds"] for r in runs), max(r[2] for r in runs) - bare)
            for name, runs in (("wmtp convert (streaming)", wmtp), ("naive method", naive))
        ]
        print(
            f"floor: cp {floor_cp:.2f} s + SHA-256 {floor_sha:.2f} s (sha256sum "
            f"{coreutils_sha:.2f} s, hashlib {hashlib_sha:.2f} s); bare `import torch` "
            f"RssAnon {bare / 2**20:.0f} MiB"
        )
        print(f"{'method':<28}{'wall s':>8}{'x floor':>9}{'extra anon MiB':>16}{'x ckpt':>8}")
        for name, seconds, extra in rows:
            memory = f"{extra / 2**20:>16.0f}{extra / size:>8.2f}" if extra is not None else ""
            print(f"{name:<28}{seconds:>8.2f}{seconds / floor:>9.2f}{memory}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
