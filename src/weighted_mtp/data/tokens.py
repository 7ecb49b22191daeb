"""Token counting with a SentencePiece model, batched over all cores.

A record's length is BOS + prompt tokens + response tokens + EOS: the tokenizer adds the
special tokens, so they never appear as text.
"""

from __future__ import annotations

import os
from pathlib import Path

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import META_MODEL, Layout

SPECIAL_TOKENS = 2  # BOS + EOS


class Tokenizer:
    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from weighted_mtp.models.tokenizer import load_sentencepiece

        self.path = Path(path)
        self.threads = threads or os.cpu_count() or 1
        self.sp = load_sentencepiece(self.path)
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise WmtpError("tokenizer defines no BOS or EOS token", path=self.path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def counts(self, texts: list[str]) -> list[int]:
        """Token counts of many texts, encoded in parallel by SentencePiece's threads."""
        if not texts:
            return []
        return [len(ids) for ids in self.sp.encode(texts, num_threads=self.threads)]

    def count(self, text: str) -> int:
        return len(self.sp.encode(text))


def resolve_tokenizer(layout: Layout | None, given: str | Path | None) -> Path:
    """`--tokenizer PATH` if given, else the Meta model's tokenizer in the storage root."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise WmtpError(
                "tokenizer not found",
                path=path,
                hint="pass --tokenizer PATH to a SentencePiece tokenizer.model",
            )
        return path
    default = layout.model(META_MODEL).tokenizer_model if layout is not None else None
    if default is None or not default.is_file():
        raise WmtpError(
            "no tokenizer to count tokens with",
            path=default,
            hint=f"download the model (`wmtp models download {META_MODEL}`) "
            "or pass --tokenizer PATH",
        )
    return default
