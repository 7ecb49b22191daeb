"""SentencePiece tokenizers: the facts a model folder records, and comparing two of them.

Vocabulary size and special ids are read from the `tokenizer.model` itself, never assumed:
Llama-2 has no pad id, and a trimmed micro tokenizer has fewer pieces than its base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import write_json
from weighted_mtp.storage.layout import META_MODEL, Layout

if TYPE_CHECKING:
    import sentencepiece as spm


@dataclass(frozen=True)
class TokenizerFacts:
    """What metadata.json records about a tokenizer; absent special ids are None."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def load_sentencepiece(path: str | Path) -> spm.SentencePieceProcessor:
    """A loaded SentencePiece model, or one clear error naming the file."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise WmtpError(
            "tokenizer model not found",
            path=path,
            hint="download the model first (`wmtp models download`)",
        )
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (RuntimeError, OSError) as exc:
        raise WmtpError(f"not a SentencePiece model ({exc})", path=path) from None
    return processor


def _special(value: int) -> int | None:
    return value if value >= 0 else None


def tokenizer_facts(path: str | Path) -> TokenizerFacts:
    sp = load_sentencepiece(path)
    return TokenizerFacts(
        vocab_size=sp.GetPieceSize(),
        bos_id=_special(sp.bos_id()),
        eos_id=_special(sp.eos_id()),
        unk_id=_special(sp.unk_id()),
        pad_id=_special(sp.pad_id()),
    )


def _model_proto(path: str | Path) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(load_sentencepiece(path).serialized_model_proto())
    return proto


# Trainer settings that change how text is split; the rest (input files, thread counts) don't.
_TOKENIZING_TRAINER_FIELDS = (
    "model_type",
    "byte_fallback",
    "split_digits",
    "treat_whitespace_as_suffix",
)


def tokenizer_difference(
    a: str | Path, b: str | Path, *, prefix: bool = False, replaced: dict[int, str] | None = None
) -> str | None:
    """None if the two models tokenize identically (same pieces with the same scores and
    kinds at the same ids, same special ids and normalization); else the first difference.

    With `prefix`, `a` is a trimmed copy of `b` (see `trim_tokenizer`): it may have fewer
    pieces, and the ids in `replaced` (`{id: b's piece}`) hold the whitespace piece instead.
    """
    facts_a, facts_b = tokenizer_facts(a), tokenizer_facts(b)
    for field, value in facts_a.to_dict().items():
        if value != getattr(facts_b, field) and not (prefix and field == "vocab_size"):
            return f"{field.replace('_', ' ')} {value} vs {getattr(facts_b, field)}"
    if facts_a.vocab_size > facts_b.vocab_size:
        return f"vocab size {facts_a.vocab_size} vs {facts_b.vocab_size}"
    proto_a, proto_b = _model_proto(a), _model_proto(b)
    replaced = replaced or {}
    for i, (piece_a, piece_b) in enumerate(zip(proto_a.pieces, proto_b.pieces, strict=False)):
        if i in replaced:
            if (piece_a.piece, piece_b.piece) != (WHITESPACE_PIECE, replaced[i]):
                return f"piece {i}: {piece_a.piece!r} is not the recorded replacement"
        elif (piece_a.piece, piece_a.score, piece_a.type) != (
            piece_b.piece,
            piece_b.score,
            piece_b.type,
        ):
            return f"piece {i}: {piece_a.piece!r} vs {piece_b.piece!r}"
    for spec in ("normalizer_spec", "denormalizer_spec"):
        if getattr(proto_a, spec) != getattr(proto_b, spec):
            return f"different {spec.replace('_', ' ')}"
    for field in _TOKENIZING_TRAINER_FIELDS:
        value_a = getattr(proto_a.trainer_spec, field)
        value_b = getattr(proto_b.trainer_spec, field)
        if value_a != value_b:
            return f"trainer {field} {value_a} vs {value_b}"
    return None


def shared_with_meta(layout: Layout, tokenizer: str | Path) -> tuple[str | None, str | None]:
    """(`tokenizer_shared_with`, `tokenizer_difference`) for metadata.json: shared with the
    Meta model's tokenizer only if the two compare equal."""
    meta = layout.model(META_MODEL).tokenizer_model
    if not meta.is_file():
        return None, (
            f"not compared: {META_MODEL}'s tokenizer is missing; download it and "
            "build this model again"
        )
    difference = tokenizer_difference(tokenizer, meta)
    return (META_MODEL, None) if difference is None else (None, difference)


def tokenizer_config(facts: TokenizerFacts, sp_path: str | Path) -> dict[str, Any]:
    """`tokenizer_config.json`: ids and their pieces, as `LlamaTokenizer` expects them."""
    sp = load_sentencepiece(sp_path)

    def token(i: int | None) -> str | None:
        return sp.IdToPiece(i) if i is not None else None

    return {
        "model_type": "sentencepiece",
        "tokenizer_class": "LlamaTokenizer",
        "tokenizer_file": Path(sp_path).name,
        "vocab_size": facts.vocab_size,
        "bos_token_id": facts.bos_id,
        "eos_token_id": facts.eos_id,
        "unk_token_id": facts.unk_id,
        "pad_token_id": facts.pad_id,
        "bos_token": token(facts.bos_id),
        "eos_token": token(facts.eos_id),
        "unk_token": token(facts.unk_id),
        "pad_token": token(facts.pad_id),
        "add_bos_token": True,
        "add_eos_token": False,
    }


def write_tokenizer_config(out: str | Path, sp_path: str | Path) -> dict[str, Any]:
    """Write `tokenizer_config.json` for the SentencePiece model at `sp_path`."""
    config = tokenizer_config(tokenizer_facts(sp_path), sp_path)
    write_json(out, config)
    return config


WHITESPACE_PIECE = "\u2581"  # SentencePiece's "▁": how spaces look inside pieces


@dataclass(frozen=True)
class TrimmedTokenizer:
    """A trimmed tokenizer's facts, and the ids whose piece differs from the base's
    (`{id: base piece}`; see `trim_tokenizer`)."""

    facts: TokenizerFacts
    replaced: dict[int, str]


def trim_tokenizer(src: str | Path, dst: str | Path, vocab_size: int) -> TrimmedTokenizer:
    """Write the first `vocab_size` pieces of `src` as a new SentencePiece model at `dst`.

    Ids, scores and piece kinds are unchanged, so a model with a smaller embedding shares
    the base's ids. Text whose merges are cut off falls back to shorter pieces or bytes, so
    any text still encodes losslessly; that needs every byte-fallback piece and special id
    below `vocab_size`, and the whitespace piece "▁": its bytes would decode as a literal
    "▁", not a space. Llama's "▁" sits at id 29871, so when it is cut off it takes the
    place of the last normal piece kept (the least frequent merge; no kept piece is built
    from it); that one id is reported in `replaced`.
    """
    from weighted_mtp.storage.atomic import write_bytes

    proto = _model_proto(src)
    total = len(proto.pieces)
    if not 0 < vocab_size <= total:
        raise WmtpError(
            f"cannot trim the tokenizer to {vocab_size} pieces: it has {total}",
            path=src,
            hint="choose a vocab size no larger than the base's",
        )
    if not proto.trainer_spec.byte_fallback:
        raise WmtpError(
            "tokenizer has no byte fallback: trimming it would turn text into <unk>", path=src
        )
    kinds = proto.SentencePiece
    essential = (kinds.UNKNOWN, kinds.CONTROL, kinds.BYTE)
    needed = max((i for i, p in enumerate(proto.pieces) if p.type in essential), default=-1)
    if needed >= vocab_size:
        raise WmtpError(
            f"piece {needed} ({proto.pieces[needed].piece!r}) is a special or byte piece "
            f"beyond the first {vocab_size}",
            path=src,
            hint=f"choose a vocab size above {needed}",
        )
    whitespace = next((p for p in proto.pieces if p.piece == WHITESPACE_PIECE), None)
    del proto.pieces[vocab_size:]
    replaced = {}
    kept = {p.piece for p in proto.pieces}
    if whitespace is not None and WHITESPACE_PIECE not in kept:
        slot = max((i for i, p in enumerate(proto.pieces) if p.type == kinds.NORMAL), default=-1)
        if slot <= needed:
            raise WmtpError(
                f"no room for the whitespace piece in {vocab_size} pieces",
                path=src,
                hint="choose a larger vocab size",
            )
        replaced[slot] = proto.pieces[slot].piece
        proto.pieces[slot].CopyFrom(whitespace)
    proto.trainer_spec.vocab_size = vocab_size
    write_bytes(dst, proto.SerializeToString())
    return TrimmedTokenizer(tokenizer_facts(dst), replaced)
