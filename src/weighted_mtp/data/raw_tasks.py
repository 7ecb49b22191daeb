"""Raw rows of a dataset turned into training tasks by its benchmark
(`Benchmark.training_tasks`), checked and accounted for here: each task stays in one split
and appears once, texts beyond the size limit are left out, and rows and samples of the
wrong types are counted by reason.

A task's samples share one prompt (so it is tokenized once). Raw files are read line by
line; a problem is never held longer than it takes to turn it into its samples.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import assets
from weighted_mtp.assets.benchmark import Reject, Task, TaskContext, language_codes
from weighted_mtp.assets.prompt_template import PROMPT_TEMPLATE
from weighted_mtp.assets.rows import Rejected
from weighted_mtp.data.splits import DisjointSplits
from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import current_limits
from weighted_mtp.storage.jsonl import iter_jsonl


@dataclass
class Rejections:
    """Rows and samples dropped because a field has the wrong type (a null where the
    upstream schema has a string, say) or a text is beyond the size limit: counted by reason,
    with the first place each reason was seen, for the preparation summary."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, kind: str, reason: str, path: Path, line: int) -> None:
        counts = self.rows if kind == "rows" else self.samples
        entry = counts.setdefault(reason, {"count": 0, "first": f"{path.name} line {line}"})
        entry["count"] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "samples": self.samples}


def raw_parts(source_dir: Path) -> list[Path]:
    """Raw JSONL files: evaluation splits first (so prepare can refuse train records identical
    to held-out ones), then train, then files without an official split."""
    files = sorted(source_dir.glob("*.jsonl"))
    if not files:
        raise WmtpError(
            "no raw JSONL files", path=source_dir, hint="run `wmtp data download NAME` first"
        )
    order = {"validation": 0, "test": 1, "train": 2}
    return sorted(files, key=lambda p: (order.get(p.stem, len(order)), p.name))


def iter_tasks(
    dataset: str,
    source_dir: Path,
    *,
    seed: int,
    languages: list[str] | None = None,
    splits: DisjointSplits | None = None,
    rejections: Rejections | None = None,
) -> Iterator[Task]:
    """Every task of a dataset's raw files, each checked to stay in one split. Rows and
    samples of the wrong types or sizes are left out and counted in `rejections`; a file
    that gives no sample at all because of them is an error."""
    splits = splits or DisjointSplits()
    rejections = rejections if rejections is not None else Rejections()
    benchmark = assets.benchmark(dataset)
    codes = language_codes(languages)
    max_chars = current_limits().max_text_chars
    seen: set[tuple[str, str]] = set()
    for path in raw_parts(source_dir):
        usable = 0
        first_rejected: list[str] = []
        for line, row in iter_jsonl(path):
            reject = functools.partial(_reject, rejections, first_rejected, path, line)
            try:
                tasks = benchmark.training_tasks(row, path, line, TaskContext(seed, codes, reject))
                tasks = [_limit_texts(task, max_chars, reject) for task in tasks]
            except Rejected as exc:
                reject(exc.reason, "rows")
                continue
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                raise WmtpError(
                    f"line {line}: unexpected value ({type(exc).__name__}: {exc})",
                    path=path,
                    hint="is this the right dataset file?",
                ) from None
            for task in tasks:
                splits.assign(task.task_id, task.split)
                key = (task.task_id, task.metadata["language"])
                if key in seen:
                    raise WmtpError(
                        f"line {line}: task {task.task_id!r} appears a second time",
                        path=path,
                        hint="deduplicate the raw files",
                    )
                seen.add(key)
                usable += len(task.samples)
                yield task
        if not usable and first_rejected:
            raise WmtpError(
                "no usable sample: every row or solution was rejected for its types or sizes "
                f"(first: {first_rejected[0]})",
                path=path,
                hint="is this the right dataset file?",
            )


def _reject(
    rejections: Rejections,
    first: list[str],
    path: Path,
    line: int,
    reason: str,
    kind: str = "samples",
) -> None:
    rejections.add(kind, reason, path, line)
    first[:] = first[:1] or [f"line {line}: {reason}"]


def _limit_texts(task: Task, max_chars: int, reject: Reject) -> Task:
    """Texts beyond `max_chars` are never tokenized (memory and time would grow with them):
    such a prompt rejects the row, such a response its sample."""
    texts = (task.instruction, task.input_text, task.notes, PROMPT_TEMPLATE)
    if sum(map(len, texts)) > max_chars:  # at least the rendered prompt's length
        raise Rejected(f"prompt over {max_chars:,} characters")
    kept = [sample for sample in task.samples if len(sample.response) <= max_chars]
    for _ in range(len(task.samples) - len(kept)):
        reject(f"response over {max_chars:,} characters")
    task.samples = kept
    return task
