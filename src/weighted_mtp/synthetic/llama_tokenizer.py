"""A SentencePiece tokenizer with Llama-2's conventions, trained on local text.

Llama-2's tokenizer is BPE with unk=0, bos=1, eos=2, no pad id, byte fallback (the 256
`<0xNN>` pieces at ids 3..258), digits split, and an identity normalizer that keeps every
space and newline (so code round-trips exactly). The demo and tests train one the same way
on the Python standard library's sources, which every machine with Python has.
"""

from __future__ import annotations

import io
import sysconfig
from pathlib import Path

from weighted_mtp.storage.atomic import write_bytes

DEFAULT_VOCAB_SIZE = 8192 + 128


def _corpus(max_bytes: int) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return "".join(parts)


def train_llama_style_tokenizer(
    out: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE, corpus_bytes: int = 3_000_000
) -> Path:
    """Train and write a `tokenizer.model`; deterministic for a given Python installation."""
    import sentencepiece as spm

    model = io.BytesIO()
    lines = [line for line in _corpus(corpus_bytes).splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        character_coverage=0.9999,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=2,
        max_sentence_length=8192,
        minloglevel=2,
    )
    write_bytes(out, model.getvalue())
    return Path(out)
