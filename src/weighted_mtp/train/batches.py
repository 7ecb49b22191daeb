"""Processed records to token batches, in an order every rank agrees on.

A record becomes BOS + prompt + response + EOS (prompt and response encoded separately, as
`wmtp data prepare` counts them). Its targets (`loss_mask`) are the response tokens and the
final EOS, so the model learns the answer and when to stop, never the prompt.

Order: the records are shuffled by (seed, epoch); global batch i of an epoch is the slice
[i * batch_size, (i + 1) * batch_size) of that permutation, and the remainder that does not
fill a global batch is left out, so every rank gets exactly as many micro-batches as every
other (collectives would hang otherwise). A global batch is sorted by length and dealt out in
equal contiguous shares to the ranks, each share cut into micro-batches padded to their
longest sequence: little padding, and the data position is just the step number.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weighted_mtp.data.sources import record_field
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.jsonl import iter_jsonl

if TYPE_CHECKING:
    import torch

    from weighted_mtp.data.tokens import Tokenizer


@dataclass(frozen=True)
class Example:
    """One tokenized record: `tokens` = BOS + prompt + response + EOS; the first
    `prompt_len` tokens (BOS + prompt) are context, the rest are targets."""

    tokens: list[int]
    prompt_len: int
    is_correct: bool
    task_id: str
    sample_id: str


@dataclass(frozen=True)
class Batch:
    """A right-padded micro-batch (the training contract shared with the weightings).

    tokens `[B, S]` long; loss_mask `[B, S]` bool, True where the TOKEN is a target
    (response tokens and the final EOS; prompt and padding False); lengths `[B]` long, real
    tokens per row; is_correct `[B]` bool; task_ids and sample_ids, one per row.
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    lengths: torch.Tensor
    is_correct: torch.Tensor
    task_ids: tuple[str, ...]
    sample_ids: tuple[str, ...]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.tokens.to(device),
            self.loss_mask.to(device),
            self.lengths.to(device),
            self.is_correct.to(device),
            self.task_ids,
            self.sample_ids,
        )

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens in the batch."""
        return int(self.lengths.sum())


def read_examples(
    path: Path,
    tokenizer: Tokenizer,
    *,
    max_len: int,
    correct_only: bool,
) -> list[Example]:
    """Tokenize a processed split; a record longer than `max_len`, or whose fields lack the
    schema's types, is one clear error."""
    rows = []
    for line, record in iter_jsonl(path):
        is_correct = record_field(record, "metadata.is_correct", path, line)
        if correct_only and not is_correct:
            continue
        prompt, response = (
            record_field(record, "prompt", path, line),
            record_field(record, "response", path, line),
        )
        ids = (
            record_field(record, "metadata.task_id", path, line),
            record_field(record, "metadata.sample_id", path, line),
        )
        rows.append((line, prompt, response, is_correct, ids))
    if not rows:
        return []
    sp = tokenizer.sp
    prompts = sp.encode([r[1] for r in rows], num_threads=tokenizer.threads)
    responses = sp.encode([r[2] for r in rows], num_threads=tokenizer.threads)
    bos, eos = sp.bos_id(), sp.eos_id()
    examples = []
    for (line, _p, _r, is_correct, (task_id, sample_id)), p_ids, r_ids in zip(
        rows, prompts, responses, strict=True
    ):
        tokens = [bos, *p_ids, *r_ids, eos]
        if len(tokens) > max_len:
            raise WmtpError(
                f"line {line} (sample {sample_id}) has {len(tokens)} tokens, more than the "
                f"training sequence length {max_len}",
                path=path,
                hint="prepare the data with a smaller --max-length, or raise seq_len up to the "
                "model's context (--set seq_len=N)",
            )
        examples.append(Example(tokens, 1 + len(p_ids), is_correct, task_id, sample_id))
    return examples


def require_both_outcomes(examples: list[Example], path: Path) -> None:
    """A critic learns to tell correct from incorrect: it needs both in its split."""
    correct = sum(e.is_correct for e in examples)
    if correct == 0 or correct == len(examples):
        which = "incorrect" if correct else "correct"
        raise WmtpError(
            f"the critic needs correct and incorrect solutions, this dataset has no {which} ones",
            path=path,
            hint="train the critic on a split with both (metadata.is_correct true and false)",
        )


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad to the longest example; padding is never a target."""
    import torch

    width = max(len(e.tokens) for e in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [B, S]
    mask = torch.zeros((len(examples), width), dtype=torch.bool)  # [B, S]
    for row, example in enumerate(examples):
        n = len(example.tokens)
        tokens[row, :n] = torch.tensor(example.tokens)
        mask[row, example.prompt_len : n] = True
    return Batch(
        tokens=tokens,
        loss_mask=mask,
        lengths=torch.tensor([len(e.tokens) for e in examples]),
        is_correct=torch.tensor([e.is_correct for e in examples]),
        task_ids=tuple(e.task_id for e in examples),
        sample_ids=tuple(e.sample_id for e in examples),
    )


@dataclass(frozen=True)
class Sharding:
    """How one optimizer step's global batch splits: `world` ranks, each taking
    `accumulation` micro-batches of `micro_batch_size` sequences (`batch_size` is a
    multiple of `micro_batch_size x world`: `config.validate_for_world`)."""

    batch_size: int
    micro_batch_size: int
    world: int

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world)


class BatchPlan:
    """The deterministic data order: which examples form step n's batches on each rank.

    `by_task` keeps each task's records together (the tasks shuffled, the records of a
    task in file order), so a global batch holds both sides of a task's (correct,
    incorrect) pairs: what a pairwise critic trains on."""

    def __init__(
        self,
        examples: list[Example],
        sharding: Sharding,
        seed: int,
        pad_id: int,
        *,
        by_task: bool = False,
    ):
        if len(examples) < sharding.batch_size:
            raise WmtpError(
                f"{len(examples)} training examples do not fill one batch of {sharding.batch_size}",
                hint="use a smaller --set batch_size or more data",
            )
        self.examples, self.sharding, self.seed, self.pad_id = examples, sharding, seed, pad_id
        self.by_task = by_task
        self.steps_per_epoch = len(examples) // sharding.batch_size
        self._order: tuple[int, list[int]] | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        """A permutation of the example indices, the same for every rank and every run."""
        if self._order is None or self._order[0] != epoch:
            shuffle = random.Random(f"{self.seed}:{epoch}").shuffle
            if self.by_task:
                by_task: dict[str, list[int]] = {}
                for i, example in enumerate(self.examples):
                    by_task.setdefault(example.task_id, []).append(i)
                tasks = sorted(by_task)
                shuffle(tasks)
                order = [i for task in tasks for i in by_task[task]]
            else:
                order = list(range(len(self.examples)))
                shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def global_batch(self, step: int) -> list[Example]:
        """Step `step`'s (0-based) global batch, sorted by length (longest first)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        size = self.sharding.batch_size
        chosen = self.epoch_order(epoch)[index * size : (index + 1) * size]
        return sorted((self.examples[i] for i in chosen), key=lambda e: -len(e.tokens))

    def micro_batches(self, step: int, rank: int) -> list[Batch]:
        """This rank's micro-batches of step `step`: an equal contiguous share of the
        length-sorted global batch."""
        s = self.sharding
        share = s.micro_batch_size * s.accumulation
        mine = self.global_batch(step)[rank * share : (rank + 1) * share]
        return [
            collate(mine[i : i + s.micro_batch_size], self.pad_id)
            for i in range(0, share, s.micro_batch_size)
        ]


def fixed_batches(examples: Iterable[Example], size: int, pad_id: int) -> list[Batch]:
    """Validation batches in file order (every example once, the last batch may be short)."""
    items = list(examples)
    return [collate(items[i : i + size], pad_id) for i in range(0, len(items), size)]
