"""Benchmark: memory-efficient (sequential) multi-token training vs the naive path.

    uv run python benchmarks/train_step.py [--batch 8] [--seq 512] [--steps 3]

A micro-mtp-sized model (dim 512, 8 heads, 4 blocks = head 0 + 3 extra heads, vocab 8000,
float32, random weights) trains on random tokens, batch 8 x 512, the first quarter of each
row a masked prompt. Each case runs in its own process (warm-up step, then `--steps` timed
optimizer steps: forward, backward, fused AdamW) through the trainer's own
`weighted_mtp.train.losses` functions:

- (a) next-token only: head 0 (`--n-future 1`, the trainer's path: sequential, one head),
  the floor for memory;
- (b) 4 heads, naive: every head's logits alive at once, one backward;
- (c) 4 heads, sequential: the trunk once, each head forward + backward in turn.

Reported: tokens/s and peak RssAnon (anonymous memory, sampled every 5 ms by the parent),
also above a bare `import torch` process. Targets: (c) memory within 1.2x of (a), (c)
tokens/s within 1.3x of (b).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from _measure import rss_anon_kib

CHILD = """
import json, sys, time
import torch
from weighted_mtp.models.adapter import MtpTransformer
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.train.losses import (
    head_scales, naive_backward, normaliser_terms, sequential_backward,
)

case, batch, seq, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
params = MetaParams(dim=512, n_layers=4, n_heads=8, vocab_size=8000, n_future_tokens=4)
torch.manual_seed(0)
model = MtpTransformer(params)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer
tokens = torch.randint(0, params.vocab_size, (batch, seq))  # [B, S]
mask = torch.ones_like(tokens, dtype=torch.bool)
mask[:, : seq // 4] = False  # the prompt
n_heads = 1 if case == "next-token" else 4
backward = naive_backward if case == "naive" else sequential_backward  # as the trainer
scales = head_scales(normaliser_terms(mask, None, n_heads, "count"))

def step():
    backward(model, tokens, mask, None, scales)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

step()  # warm-up: allocator, AdamW state
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
rate = batch * seq * steps / seconds
print(json.dumps({"tokens_per_s": rate, "seconds_per_step": seconds / steps}))
"""

CHILD_BARE = "import time, torch; time.sleep(0.5)"
CASES = (
    ("next-token", "(a) next-token only"),
    ("naive", "(b) 4 heads, naive"),
    ("sequential", "(c) 4 heads, sequential"),
)


def run_measured(code: str, *args: str) -> tuple[dict, int]:
    """Run `python -c code args`; returns (its JSON output, peak RssAnon in bytes)."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], rss_anon_kib(child.pid) or 0)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{err}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), peak[0] * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    _, bare = run_measured(CHILD_BARE)
    results = {}
    for case, label in CASES:
        out, peak = run_measured(CHILD, case, str(args.batch), str(args.seq), str(args.steps))
        results[case] = (out["tokens_per_s"], peak)
        mib, above = peak / 2**20, (peak - bare) / 2**20
        print(
            f"{label:28s} {out['tokens_per_s']:8.0f} tokens/s  "
            f"{out['seconds_per_step']:6.2f} s/step  "
            f"peak RssAnon {mib:6.0f} MiB ({above:6.0f} MiB above bare torch)",
            flush=True,
        )
    speed_a, mem_a = results["next-token"]
    speed_b, mem_b = results["naive"]
    speed_c, mem_c = results["sequential"]
    print(f"bare `import torch`: peak RssAnon {bare / 2**20:.0f} MiB")
    print(
        f"(c) memory / (a): {mem_c / mem_a:.2f}x (target <= 1.2x); (b) / (a): {mem_b / mem_a:.2f}x"
    )
    print(
        f"(b) tokens/s / (c): {speed_b / speed_c:.2f}x (target <= 1.3x); "
        f"(a) / (c): {speed_a / speed_c:.2f}x"
    )


if __name__ == "__main__":
    main()
