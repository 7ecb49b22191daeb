"""Do transformers and SentencePiece tokenize alike? The one check `wmtp models verify` and
`wmtp models export-hf` run on a tokenizer folder.

On a fixed corpus (the edge cases below, and every prompt and response of the small sets
present in the storage), `AutoTokenizer.from_pretrained(folder)` must give SentencePiece's
ids with BOS first, and decode them back to the text wherever SentencePiece does. The data
path tokenizes with SentencePiece, so any difference would train or evaluate a model on ids
it never saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.jsonl import iter_jsonl
from weighted_mtp.storage.layout import DATASETS, Layout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Where SentencePiece and a converted tokenizer tend to part: whitespace runs at either
# end, tabs and CRLF, nothing at all, characters outside the vocabulary (byte fallback),
# SentencePiece's own "▁", and special-token strings, which SentencePiece reads as text.
EDGE_CASES = (
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "hello world",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "  two spaces",
    "a  b   c    d        e",
    "\ttab\tseparated\t\t",
    "line one\r\nline two\r\n",
    "\n\n\ndef f():\n    return 1\n\n",
    "héllo wörld, naïve café, Ærøskøbing",
    "中文字符 日本語のテキスト 한국어",
    "emoji 🎉🚀 and 👩‍💻 in text",
    "\x00\x01\x7f control bytes",
    "math ∑ ∫ √ ≈ ≠ ∞",
    "▁ the whitespace piece ▁▁ itself",
    "<s>",
    "</s>",
    "<unk>",
    "<s> starts with BOS",
    "</s> starts with EOS",
    "<unk>unknown<s>inside</s>",
    "<0x41> looks like a byte piece",
    "    indented code with  double  spaces\n\tand a tab\n",
)


@dataclass(frozen=True)
class Sample:
    """One text of the corpus, and where it comes from (named when it disagrees)."""

    where: str
    text: str


@dataclass(frozen=True)
class Agreement:
    """What a passing check compared."""

    texts: int
    round_trips: int

    def detail(self) -> str:
        return (
            f"AutoTokenizer gives SentencePiece's ids on {self.texts} texts and decodes "
            f"{self.round_trips} back"
        )


def agreement_corpus(layout: Layout) -> list[Sample]:
    """The edge cases, then every prompt and response of the small sets present."""
    samples = [Sample(f"edge case {i}", text) for i, text in enumerate(EDGE_CASES)]
    return samples + list(_small_set_samples(layout))


def _small_set_samples(layout: Layout) -> Iterator[Sample]:
    for name in DATASETS:
        folder = layout.small(name).root
        for path in sorted(folder.glob("*_small.jsonl")) if folder.is_dir() else []:
            for line, record in iter_jsonl(path):
                for key in ("prompt", "response"):
                    if isinstance(record.get(key), str):
                        where = f"{layout.relative(path)} line {line} {key}"
                        yield Sample(where, record[key])


def load_auto_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(folder)`, offline, or one clear error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for an unusable folder
        reason = " ".join(str(exc).split())[:200]
        raise WmtpError(
            f"transformers cannot load the tokenizer ({type(exc).__name__}: {reason})",
            path=folder,
            hint="rebuild the model folder with this wmtp version",
        ) from None


def _shown(ids: list[int], limit: int = 12) -> str:
    return str(ids[:limit])[:-1] + (", ...]" if len(ids) > limit else "]")


def check_agreement(folder: Path, sp_model: Path, samples: list[Sample]) -> Agreement:
    """Compare transformers' tokenizer in `folder` with the SentencePiece model `sp_model`
    on `samples`; the first disagreement is one WmtpError naming the text."""
    from weighted_mtp.models.tokenizer import load_sentencepiece

    sp = load_sentencepiece(sp_model)
    tokenizer = load_auto_tokenizer(folder)
    texts = [sample.text for sample in samples]
    bos = [sp.bos_id()] if sp.bos_id() >= 0 else []
    expected = [bos + ids for ids in sp.encode(texts)]  # batched: one call each side
    actual = tokenizer(texts)["input_ids"]
    for sample, want, got in zip(samples, expected, actual, strict=True):
        if got != want:
            raise WmtpError(
                f"transformers and SentencePiece disagree on {sample.where} "
                f"{sample.text[:60]!r}: {_shown(got)} vs {_shown(want)}",
                path=folder,
            )
    round_trips = [i for i, ids in enumerate(expected) if sp.decode(ids) == texts[i]]
    decoded = tokenizer.batch_decode([expected[i] for i in round_trips], skip_special_tokens=True)
    for i, text in zip(round_trips, decoded, strict=True):
        if text != texts[i]:
            raise WmtpError(
                f"transformers decodes {samples[i].where} {texts[i][:60]!r} as {text[:60]!r}",
                path=folder,
            )
    return Agreement(len(samples), len(round_trips))
