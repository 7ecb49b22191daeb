"""Benchmark: host memory per rank of loading and training the policy, 1 process vs 2 ranks.

    uv run python benchmarks/sharded_load.py [--dim 1024] [--layers 24] [--vocab 8000]
                                             [--seq 128] [--lora]

Builds a synthetic MTP model folder (random float16 weights; the defaults give 325 M
parameters: dim 1024, 24 blocks of which 4 heads, vocab 8000) in a temporary folder, then
runs, in fresh processes, on CPU:

- one process: `build_policy` (meta device, then each tensor read into its place) and one
  training step (the trainer's step, `memory_plan.traced_step`: the Baseline objective on
  2 micro-batches of 1 x `--seq` tokens accumulated, sequential-head backward, clipping,
  fused AdamW; full fine-tuning, float32);
- two gloo ranks: the same, each rank building and loading only its FSDP2 shards and
  taking one micro-batch of the same global batch.

`--load-only` stops after the load (a bigger model's load on a machine whose memory would
not hold its one-process training step).

Reported per process and phase (the load; the step): the peak anonymous memory (RssAnon,
sampled every millisecond by a thread of the process: what the process allocated) and the
peak RSS (VmHWM: also the pages of the weights file it mapped while reading; the
high-water mark is reset between the phases through /proc/self/clear_refs); each as a ratio
of rank to one process, and above what the process held before building the model (torch
and the imports: 546 MiB of RSS, 293 MiB anonymous, in every process). Target: each
rank's peak at 2 ranks <= 0.6 x the one process's, for loading and for the step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
import torch
import torch.distributed as dist
from weighted_mtp.storage.layout import ModelPaths
from weighted_mtp.train.builders import build_policy
from weighted_mtp.train.config import LoraConfig, TrainConfig
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.memory_plan import full_batch, traced_step
from weighted_mtp.train.objectives import MtpObjective, StepContext
from weighted_mtp.train.trainer import make_optimizer
from weighted_mtp.train.weightings import Baseline


def status(field: str) -> int:
    with open("/proc/self/status") as lines:
        return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))


class PeakAnon(threading.Thread):
    # RssAnon sampled every millisecond (ops release the GIL); `phase()` returns the
    # peak since the last call
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = status("RssAnon")

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, status("RssAnon"))
            time.sleep(0.001)

    def phase(self) -> int:
        peak, self.peak = max(self.peak, status("RssAnon")), status("RssAnon")
        return peak


def phase_hwm() -> int:
    peak = status("VmHWM")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the high-water mark starts again from the current RSS
    return peak


rank, world, folder, rendezvous, seq, lora, phases = sys.argv[1:8]
rank, world, seq = int(rank), int(world), int(seq)
torch.set_num_threads(1)
if world > 1:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
config = TrainConfig(
    batch_size=2, micro_batch_size=1, seq_len=seq, precision="fp32",
    lora=LoraConfig(enabled=lora == "lora", r=16, alpha=32, dropout=0.0),
)
dist_info = Dist(rank, world, torch.device("cpu"))
paths = ModelPaths(Path(folder).name, Path(folder))
sampler = PeakAnon()
sampler.start()
out = {"start_anon": sampler.phase(), "start_hwm": phase_hwm()}
started = time.perf_counter()
policy = build_policy(paths, config, dist_info)
out |= {"load_s": time.perf_counter() - started}
out |= {"load_anon": sampler.phase(), "load_hwm": phase_hwm()}
if phases == "load":
    print(json.dumps(out))
    sys.exit(0)
optimizer = make_optimizer(policy, config)
objective = MtpObjective(Baseline(config.normalize), policy.core.params.n_future_tokens)
vocab = policy.core.params.vocab_size
batches = [full_batch(1, seq, vocab, dist_info.device) for _ in range(2 // world)]
sampler.phase()
phase_hwm()
started = time.perf_counter()
traced_step(objective, policy, optimizer, batches, config, StepContext(0, dist_info, None))
out |= {"step_s": time.perf_counter() - started}
out |= {"step_anon": sampler.phase(), "step_hwm": phase_hwm()}
if world > 1:
    dist.destroy_process_group()
print(json.dumps(out))
"""

MIB = 2**20


def run(world: int, folder: Path, args: argparse.Namespace, scratch: Path) -> list[dict]:
    """Each rank's measurements (one process when `world` is 1)."""
    rendezvous = scratch / f"rendezvous-{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    options = [str(folder), str(rendezvous), str(args.seq)]
    options += ["lora" if args.lora else "full", "load" if args.load_only else "all"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(rank), str(world), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child failed:\n{err[-3000:]}")
        results.append(json.loads(out.splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    parser.add_argument("--load-only", action="store_true", help="measure the load alone")
    args = parser.parse_args()

    from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes
    from weighted_mtp.synthetic.model_mirrors import write_model_folder

    params = MetaParams(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        vocab_size=args.vocab,
        n_future_tokens=4,
        max_seq_len=max(2048, args.seq),
    )
    n_params = sum(math.prod(shape) for shape in meta_tensor_shapes(params).values())
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        started = time.perf_counter()
        folder = write_model_folder(scratch / "synthetic-mtp", params).root
        print(
            f"synthetic MTP model: {n_params / 1e6:.0f} M parameters, float16 file "
            f"{(folder / 'safetensors' / 'model.safetensors').stat().st_size / MIB:.0f} MiB "
            f"({time.perf_counter() - started:.1f} s to write); "
            f"{'LoRA' if args.lora else 'full fine-tuning'}, float32, load average "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        one = run(1, folder, args, scratch)[0]
        two = run(2, folder, args, scratch)
    for phase in ("load",) if args.load_only else ("load", "step"):
        for measure, label in (("anon", "peak RssAnon"), ("hwm", "peak RSS (VmHWM)")):
            # above what the process held before building: torch and the imports
            base_one, base_two = one[f"start_{measure}"], max(r[f"start_{measure}"] for r in two)
            single = one[f"{phase}_{measure}"]
            worst = max(rank[f"{phase}_{measure}"] for rank in two)
            ranks = ", ".join(f"{rank[f'{phase}_{measure}'] / MIB:.0f}" for rank in two)
            above = (worst - base_two) / (single - base_one)
            print(
                f"{phase} {label}: 1 process {single / MIB:.0f} MiB, 2 ranks {ranks} MiB: "
                f"ratio {worst / single:.2f}, above the start {above:.2f} "
                f"({base_one / MIB:.0f} MiB before building)",
                flush=True,
            )
        seconds = ", ".join(f"{rank[f'{phase}_s']:.1f}" for rank in two)
        print(f"{phase} time: 1 process {one[f'{phase}_s']:.1f} s, 2 ranks {seconds} s")


if __name__ == "__main__":
    main()
