"""Raw JSONL to processed Alpaca-style records, split, length-checked and summarised.

Tasks stream from the raw files in batches; each batch's prompts (one per task) and
responses are tokenized in one multi-threaded SentencePiece call. A sample that is too
long has its problem statement shortened (the input/output section and examples stay);
if its code alone cannot fit it is dropped and counted, or cut with --truncate-code.
Outputs are written to temporary files and appear under their final names only when the
whole dataset went through, task-disjointness included. `wmtp data prepare NAME` runs it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from weighted_mtp import __version__, progress
from weighted_mtp.assets.benchmark import DEFAULT_LANGUAGES, Sample, Task
from weighted_mtp.assets.prompt_template import PROMPT_TEMPLATE
from weighted_mtp.clock import utc_now
from weighted_mtp.data.raw_tasks import Rejections, iter_tasks
from weighted_mtp.data.stats import SplitStats
from weighted_mtp.data.template import RECORD_SCHEMA
from weighted_mtp.data.tokens import SPECIAL_TOKENS, Tokenizer, resolve_tokenizer
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import atomic_write, write_json
from weighted_mtp.storage.hashing import HashingWriter, sha256_file
from weighted_mtp.storage.layout import SPLITS, DatasetPaths, Layout

BATCH_SAMPLES = 1024
MIN_MAX_LENGTH = 64

# What json.dumps(..., ensure_ascii=False) writes for a string and for a bool.
_json_str = encode_basestring
_JSON_BOOL = {True: "true", False: "false"}


def fit_prefix(
    text: str,
    render: Callable[[str], str],
    count: Callable[[str], int],
    budget: int,
    guess_tokens: int,
    chars_per_token: float,
) -> tuple[str, int]:
    """(rendered text, its token count) for a long prefix of `text` whose rendering fits.

    Starts from the prefix the character/token ratio predicts and steps down by the
    measured excess, so it takes one or two exact recounts instead of a search; a result
    with an empty prefix is returned even if it does not fit (the caller checks that).
    """
    keep = max(0, min(len(text), int(guess_tokens * chars_per_token)))
    while True:
        rendered = render(text[:keep])
        tokens = count(rendered)
        if tokens <= budget or keep == 0:
            return rendered, tokens
        keep = max(0, keep - max(1, int((tokens - budget) * chars_per_token)))


@dataclass
class _Prompt:
    """A prompt as written: its text, token count, and its JSON text and digest (computed
    once per prompt, not once per record)."""

    text: str
    tokens: int
    shortened: bool = False

    def __post_init__(self) -> None:
        self.json = _json_str(self.text)
        self.digest = hashlib.blake2b(self.text.encode(), digest_size=16).digest()


class _Fitter:
    """Chooses each sample's prompt so it fits --max-length, recounting every changed text.

    A task has at most two prompts: its full one and one whose statement is shortened just
    enough for the task's longest response that can fit at all.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, truncate_code: bool) -> None:
        self.tokenizer = tokenizer
        self.budget = max_length - SPECIAL_TOKENS
        self.truncate_code = truncate_code

    def _render_shortened(self, task: Task, prefix: str) -> str:
        return task.prompt.shortened(prefix)

    def prompts(
        self, tasks: list[tuple[Task, _Prompt, list[int]]]
    ) -> list[tuple[_Prompt | None, _Prompt | None]]:
        """(shortened prompt or None, statement-free prompt or None) for each
        `(task, full prompt, response token counts)`. The candidates of a whole batch are
        counted together, so shortening runs on all threads too."""
        results: list[tuple[_Prompt | None, _Prompt | None]] = [(None, None)] * len(tasks)
        over = {
            i: [r for r in counts if full.tokens + r > self.budget]
            for i, (_task, full, counts) in enumerate(tasks)
        }
        over = {i: counts for i, counts in over.items() if counts}
        texts = {i: self._render_shortened(tasks[i][0], "") for i in over}
        shortest = {
            i: _Prompt(text, n, shortened=True)
            for (i, text), n in zip(
                texts.items(), self.tokenizer.counts(list(texts.values())), strict=True
            )
        }
        guesses = {}
        for i, counts in over.items():
            fitting = [r for r in counts if shortest[i].tokens + r <= self.budget]
            results[i] = (None, shortest[i])
            if fitting:
                task, full, _counts = tasks[i]
                ratio = len(full.text) / max(1, full.tokens)
                budget = self.budget - max(fitting)
                keep = int((budget - shortest[i].tokens) * ratio)
                guesses[i] = (budget, ratio, self._render_shortened(task, task.instruction[:keep]))
        counted = self.tokenizer.counts([text for _b, _r, text in guesses.values()])
        for (i, (budget, ratio, text)), tokens in zip(guesses.items(), counted, strict=True):
            if tokens > budget:  # the guess overshot: step down with exact recounts
                task = tasks[i][0]
                text, tokens = fit_prefix(
                    task.instruction,
                    functools.partial(self._render_shortened, task),
                    self.tokenizer.count,
                    budget,
                    2 * budget - shortest[i].tokens - tokens,
                    ratio,
                )
            results[i] = (_Prompt(text, tokens, shortened=True), shortest[i])
        return results

    def fit(
        self,
        prompts: tuple[_Prompt, _Prompt | None, _Prompt | None],
        response: str,
        response_tokens: int,
    ) -> tuple[_Prompt, str, int, bool] | None:
        """(prompt, response, response tokens, truncated), or None to drop the sample."""
        for prompt in prompts[:2]:
            if prompt is not None and prompt.tokens + response_tokens <= self.budget:
                return prompt, response, response_tokens, False
        shortest = prompts[2] or prompts[1]
        if not self.truncate_code or shortest is None or shortest.tokens >= self.budget:
            return None
        cut, cut_tokens = fit_prefix(
            response,
            lambda code: code,
            self.tokenizer.count,
            self.budget - shortest.tokens,
            self.budget - shortest.tokens,
            len(response) / max(1, response_tokens),
        )
        if not cut.strip():
            return None
        return shortest, cut, cut_tokens, True


class _SplitFiles:
    """One atomic, hashed output per split, opened on the split's first record; lines are
    collected per batch and written in one call."""

    def __init__(self, paths: DatasetPaths, stack: ExitStack) -> None:
        self.paths = paths
        self.stack = stack
        self.writers: dict[str, HashingWriter] = {}
        self.pending: dict[str, list[str]] = {}

    def write(self, split: str, line: str) -> None:
        self.pending.setdefault(split, []).append(line)

    def flush(self) -> None:
        for split, lines in self.pending.items():
            writer = self.writers.get(split)
            if writer is None:
                handle = self.stack.enter_context(atomic_write(self.paths.split(split), "wb"))
                writer = self.writers[split] = HashingWriter(handle)
            writer.write("".join(lines).encode())
        self.pending.clear()


def _batches(tasks: Iterator[Task], size: int) -> Iterator[list[Task]]:
    batch, samples = [], 0
    for task in tasks:
        batch.append(task)
        samples += len(task.samples)
        if samples >= size:
            yield batch
            batch, samples = [], 0
    if batch:
        yield batch


class _Preparer:
    def __init__(self, tokenizer: Tokenizer, max_length: int, truncate_code: bool) -> None:
        self.tokenizer = tokenizer
        self.fitter = _Fitter(tokenizer, max_length, truncate_code)
        self.stats = {split: SplitStats() for split in SPLITS}
        # Records of the evaluation splits, so an identical train record can be refused
        # (raw parts are read evaluation splits first).
        self.held_out: dict[bytes, str] = {}
        self.held_out_prompts: set[bytes] = set()

    def run(self, tasks: Iterator[Task], files: _SplitFiles, advance: progress.Advance) -> None:
        """Batch k+1 is tokenized in the background (SentencePiece releases the GIL) while
        batch k is fitted and written here."""
        with ThreadPoolExecutor(1) as pool:
            pending = None
            for batch in _batches(tasks, BATCH_SAMPLES):
                counted = pool.submit(self._count, batch)
                if pending is not None:
                    self._emit_batch(pending.result(), files, advance)
                pending = counted
            if pending is not None:
                self._emit_batch(pending.result(), files, advance)

    def _count(self, batch: list[Task]) -> list[tuple[Task, _Prompt, list[int]]]:
        texts = [t.prompt.render() for t in batch]
        prompt_tokens = self.tokenizer.counts(texts)
        response_tokens = iter(
            self.tokenizer.counts([s.response for t in batch for s in t.samples])
        )
        return [
            (task, _Prompt(text, tokens), [next(response_tokens) for _ in task.samples])
            for task, text, tokens in zip(batch, texts, prompt_tokens, strict=True)
        ]

    def _emit_batch(
        self,
        items: list[tuple[Task, _Prompt, list[int]]],
        files: _SplitFiles,
        advance: progress.Advance,
    ) -> None:
        for (task, full, counts), shorter in zip(items, self.fitter.prompts(items), strict=True):
            self._emit_task(task, (full, *shorter), counts, files)
            advance(len(counts))
        files.flush()

    def _emit_task(
        self,
        task: Task,
        prompts: tuple[_Prompt, _Prompt | None, _Prompt | None],
        response_tokens: list[int],
        files: _SplitFiles,
    ) -> None:
        stats = self.stats[task.split]
        stats.duplicates += task.duplicates
        language = task.metadata["language"]
        metadata = _TaskMetadata(task)
        records_before = stats.records
        for sample, tokens in zip(task.samples, response_tokens, strict=True):
            fitted = self.fitter.fit(prompts, sample.response, tokens)
            if fitted is None:
                stats.dropped += 1
                continue
            prompt, response, r_tokens, truncated = fitted
            if self._seen_in_other_split(task.split, prompt, response):
                stats.cross_split_duplicates += 1
                continue
            files.write(
                task.split, _record_line(prompt, response, metadata.json(sample, prompt, truncated))
            )
            stats.add_record(
                prompt.tokens,
                r_tokens,
                prompt.tokens + r_tokens + SPECIAL_TOKENS,
                sample.is_correct,
                prompt.shortened,
                truncated,
                language,
            )
        stats.tasks += stats.records > records_before

    def _seen_in_other_split(self, split: str, prompt: _Prompt, response: str) -> bool:
        if split == "train" and prompt.digest not in self.held_out_prompts:
            return False  # the usual case, decided without hashing the response
        key = hashlib.blake2b(response.encode(), digest_size=16, key=prompt.digest).digest()
        if split == "train":
            return key in self.held_out
        self.held_out_prompts.add(prompt.digest)
        return self.held_out.setdefault(key, split) != split


class _TaskMetadata:
    """A record's metadata JSON: the task's part is serialised once, the sample's per record.
    Same text as `json.dumps` of the dict `{task_id, sample_id, is_correct, **task metadata,
    shortened_prompt, truncated_response}`."""

    def __init__(self, task: Task) -> None:
        shared = json.dumps(task.metadata, ensure_ascii=False)[1:-1]
        self.task_id = json.dumps(task.task_id, ensure_ascii=False)
        self.shared = f", {shared}" if shared else ""

    def json(self, sample: Sample, prompt: _Prompt, truncated: bool) -> str:
        return (
            f'{{"task_id": {self.task_id}, "sample_id": {_json_str(sample.sample_id)}, '
            f'"is_correct": {_JSON_BOOL[sample.is_correct]}{self.shared}, '
            f'"shortened_prompt": {_JSON_BOOL[prompt.shortened]}, '
            f'"truncated_response": {_JSON_BOOL[truncated]}}}'
        )


def _record_line(prompt: _Prompt, response: str, metadata_json: str) -> str:
    """Exactly `json.dumps({"prompt", "response", "metadata"})` + newline, reusing the
    prompt's JSON text."""
    return (
        f'{{"prompt": {prompt.json}, "response": {_json_str(response)}, '
        f'"metadata": {metadata_json}}}\n'
    )


def prepare_into(
    paths: DatasetPaths,
    source_dir: Path,
    tokenizer_path: Path,
    *,
    max_length: int = 2048,
    seed: int = 42,
    truncate_code: bool = False,
    languages: list[str] | None = None,
) -> dict[str, Any]:
    """Prepare `source_dir`'s raw files into `paths.processed`; returns the summary."""
    if max_length < MIN_MAX_LENGTH:
        raise UsageError(f"--max-length {max_length} is too small (minimum {MIN_MAX_LENGTH})")
    tokenizer = Tokenizer(tokenizer_path)
    preparer = _Preparer(tokenizer, max_length, truncate_code)
    rejections = Rejections()
    tasks = iter_tasks(
        paths.name, Path(source_dir), seed=seed, languages=languages, rejections=rejections
    )
    with ExitStack() as stack, progress.task(f"prepare {paths.name}") as advance:
        files = _SplitFiles(paths, stack)
        preparer.run(tasks, files, advance)
        if not files.writers:
            raise WmtpError(
                f"no records left in {paths.name} after preparation",
                path=source_dir,
                hint="check the raw files and --max-length",
            )
        written = {split: writer.hexdigest() for split, writer in files.writers.items()}
    for split in SPLITS:
        if split not in written:
            paths.split(split).unlink(missing_ok=True)
    write_json(paths.schema, RECORD_SCHEMA)
    summary = {
        "dataset": paths.name,
        "created_at": utc_now(),
        "tool_version": __version__,
        "max_length": max_length,
        "seed": seed,
        "truncate_code": truncate_code,
        "languages": sorted(languages or DEFAULT_LANGUAGES),
        "tokenizer": {
            "path": str(Path(tokenizer_path).absolute()),
            "sha256": sha256_file(tokenizer_path),
            "vocab_size": tokenizer.vocab_size,
        },
        "template": PROMPT_TEMPLATE,
        "splits": {
            split: preparer.stats[split].to_dict(max_length) for split in SPLITS if split in written
        },
        "rejected": rejections.to_dict(),
        "files": {
            **{paths.split(s).name: digest for s, digest in written.items()},
            paths.schema.name: sha256_file(paths.schema),
        },
    }
    write_json(paths.summary(dt.datetime.now(dt.UTC).date()), summary)
    return summary


def prepare_dataset(
    layout: Layout,
    name: str,
    *,
    max_length: int = 2048,
    seed: int = 42,
    tokenizer: str | Path | None = None,
    truncate_code: bool = False,
    languages: list[str] | None = None,
) -> dict[str, Any]:
    """Prepare a downloaded dataset of the storage root; returns the summary. The freshness
    store records the raw files it was prepared from (verified by `validate_dataset`)."""
    paths = layout.dataset(name)
    summary = prepare_into(
        paths,
        paths.raw,
        resolve_tokenizer(layout, tokenizer),
        max_length=max_length,
        seed=seed,
        truncate_code=truncate_code,
        languages=languages,
    )
    store = freshness.Store(layout)
    store.record_built(name)
    store.save()
    return summary
