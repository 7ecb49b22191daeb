"""Benchmark: `prepare` on a synthetic CodeContests-shaped corpus at N and 4N problems.

For each size it prints records/s and the peak resident memory of the preparing process
(it must stay flat as the corpus grows: everything streams), and the ratio of the
preparation's cost to the tokenizer alone encoding the same texts (each task's prompt once
and every candidate response, batched; target <= 1.5x), both in wall time and in CPU time
(which other load on the machine hardly disturbs). It also times the bare
tokenization with one thread, all threads and a process pool, which is how the
preparation's tokenizer strategy was chosen.

    uv run python benchmarks/prepare.py [--problems 400] [--solutions 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _build(workdir: Path, problems: int, solutions: int) -> Path:
    """Synthetic upstream Parquet, downloaded into a storage root as raw JSONL."""
    from weighted_mtp.assets.benchmarks.codecontests import write_codecontests_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.storage.atomic import atomic_write
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    mirror = write_codecontests_mirror(
        workdir / "mirror",
        atomic_write,
        n_problems=problems,
        seed=0,
        solutions_per_problem=solutions,
        row_group_size=32,
    )
    layout = Layout(workdir / "storage")
    init_storage(layout)
    download_dataset(layout, load_catalog(), "codecontests", mirror=mirror)
    return layout.root


def _prepare_child(root: str, tokenizer: str, queue) -> None:
    """Runs in a fresh process so its peak RSS is the preparation's alone."""
    from weighted_mtp.data.prepare import prepare_dataset
    from weighted_mtp.storage.layout import Layout

    start, cpu = time.perf_counter(), _cpu_seconds()
    summary = prepare_dataset(Layout(root), "codecontests", tokenizer=tokenizer)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    records = sum(s["records"] for s in summary["splits"].values())
    queue.put({"seconds": elapsed, "cpu": cpu, "records": records, "peak_rss_mib": _peak_rss_mib()})


def _cpu_seconds() -> float:
    """CPU time of this process, all its threads: the cost, whatever else loads the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries that over from the parent
    across fork+exec, while VmHWM belongs to the process's current address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_prepare(root: Path, tokenizer: Path) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_prepare_child, args=(str(root), str(tokenizer), queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def _texts(root: Path) -> list[str]:
    """What prepare must encode at least once: each task's prompt and every candidate
    response (including those it will drop), read with the same converter."""
    from weighted_mtp.assets.prompt_template import render_prompt
    from weighted_mtp.data.raw_tasks import iter_tasks
    from weighted_mtp.storage.layout import Layout

    texts = []
    for task in iter_tasks("codecontests", Layout(root).dataset("codecontests").raw, seed=42):
        texts.append(render_prompt(task.instruction, task.input_text, task.notes))
        texts += [sample.response for sample in task.samples]
    return texts


def _encode_chunk(args: tuple[str, list[str]]) -> int:
    import sentencepiece as spm

    model, texts = args
    sp = spm.SentencePieceProcessor(model_file=model)
    return sum(len(ids) for ids in sp.encode(texts))


def _bare_tokenization(tokenizer: Path, texts: list[str]) -> dict[str, float]:
    """Seconds to encode `texts` with one thread, all threads, and a process pool."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    batch = 1024
    timings = {}
    for threads in (1, os.cpu_count() or 1):
        start, cpu = time.perf_counter(), _cpu_seconds()
        for i in range(0, len(texts), batch):
            sp.encode(texts[i : i + batch], num_threads=threads)
        timings[f"threads={threads}"] = time.perf_counter() - start
        timings[f"cpu threads={threads}"] = _cpu_seconds() - cpu
    workers = os.cpu_count() or 1
    chunks = [(str(tokenizer), texts[i : i + batch]) for i in range(0, len(texts), batch)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        sum(pool.map(_encode_chunk, chunks))
    timings[f"process pool x{workers}"] = time.perf_counter() - start
    return timings


def _best_of(repeats: int, measure, *args) -> dict:
    """Each timing's minimum over `repeats` runs: the least disturbed by other load."""
    runs = [measure(*args) for _ in range(repeats)]
    return {
        key: min(run[key] for run in runs) if key != "records" else runs[0][key] for key in runs[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=400, help="N (the second size is 4N)")
    parser.add_argument("--solutions", type=int, default=24, help="Python 3 solutions/problem")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="SentencePiece model (default: a freshly trained Llama-style one)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the corpora here")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    args = parser.parse_args()

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="wmtp-bench-"))
    tokenizer = args.tokenizer
    if tokenizer is None:
        from weighted_mtp.synthetic.llama_tokenizer import train_llama_style_tokenizer

        tokenizer = train_llama_style_tokenizer(workdir / "tokenizer.model")
    print(f"cores: {os.cpu_count()}; tokenizer: {tokenizer}")
    try:
        for problems in (args.problems, 4 * args.problems):
            root = _build(workdir / f"n{problems}", problems, args.solutions)
            prepared = _best_of(args.repeat, _measure_prepare, root, tokenizer)
            texts = _texts(root)
            bare = _best_of(args.repeat, _bare_tokenization, tokenizer, texts)
            wall = {k: v for k, v in bare.items() if not k.startswith("cpu")}
            best_cpu = min(v for k, v in bare.items() if k.startswith("cpu"))
            print(
                f"{problems} problems, {prepared['records']} records: "
                f"prepare {prepared['seconds']:.2f} s wall, {prepared['cpu']:.2f} s CPU "
                f"({prepared['records'] / prepared['seconds']:.0f} records/s), "
                f"peak RSS {prepared['peak_rss_mib']:.0f} MiB; bare tokenization "
                + ", ".join(f"{k} {v:.2f} s" for k, v in bare.items())
                + f"; prepare / bare: wall {prepared['seconds'] / min(wall.values()):.2f}x, "
                f"CPU {prepared['cpu'] / best_cpu:.2f}x"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
