"""Benchmark: a pairwise critic step against an mc critic step, the same global batch.

    uv run python benchmarks/critic_step.py [--repeats 5] [--threads 2]

The pairwise objective pairs records over the whole global batch, so it runs each
micro-batch forward twice (once without gradient for the pair coefficients, once with) where
the mc objective runs it once. This measures what that costs: the wall time of one optimizer
step's forwards and backwards (`prepare` + every micro-batch's `backward`, no optimizer) for
both objectives, interleaved on one value model (Llama backbone, 4 layers, width 256, vocab
8192; 16 records of 256 tokens in 4 micro-batches of 4, 8 tasks with correct and incorrect
solutions), and prints the ratio pairwise / mc (expected between 1 and 1.5: a forward without
gradient is about a third of a forward and backward).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaModel

from weighted_mtp.train.batches import Batch
from weighted_mtp.train.critic import ValueModel
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.lora import TrainedModel
from weighted_mtp.train.objectives import StepContext, ValueObjective

ROWS, SEQ, MICRO, VOCAB = 16, 256, 4, 8192


def global_batch() -> list[Batch]:
    """16 records, prompt 64 tokens then the response, cut into micro-batches of 4."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (ROWS, SEQ), generator=g)
    mask = torch.zeros(ROWS, SEQ, dtype=torch.bool)
    mask[:, 64:] = True
    correct = torch.arange(ROWS) % 2 == 0
    tasks = tuple(f"task-{b // 2}" for b in range(ROWS))
    lengths = torch.full((ROWS,), SEQ)
    rows = [slice(i, i + MICRO) for i in range(0, ROWS, MICRO)]
    return [Batch(tokens[r], mask[r], lengths[r], correct[r], tasks[r], tasks[r]) for r in rows]


def step_seconds(objective: ValueObjective, model: TrainedModel, batches: list[Batch]) -> float:
    ctx = StepContext(0, Dist(0, 1, torch.device("cpu")), None)
    start = time.perf_counter()
    prepared = objective.prepare(model, batches, ctx)
    for i, batch in enumerate(batches):
        objective.backward(model, batch, i, prepared, ctx)
    elapsed = time.perf_counter() - start
    model.core.zero_grad(set_to_none=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ,
    )
    model = TrainedModel(ValueModel(LlamaModel(config), head_hidden=64).train())
    batches = global_batch()
    objectives = {"mc": ValueObjective("mc"), "pairwise": ValueObjective("pairwise")}
    step_seconds(objectives["mc"], model, batches)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in objectives}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, objective in objectives.items():
            times[name].append(step_seconds(objective, model, batches))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"load average (1 min) before: {load:.1f}, threads {args.threads}")
    for name, value in median.items():
        print(f"  {name:8s} step (forwards + backwards) median {value:.3f} s over {args.repeats}")
    print(f"pairwise / mc: {median['pairwise'] / median['mc']:.2f}x")


if __name__ == "__main__":
    main()
