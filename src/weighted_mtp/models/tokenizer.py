"""SentencePiece tokenizers: the facts a model folder records, and comparing two of them.

Vocabulary size and special ids are read from the `tokenizer.model` itself, never assumed:
Llama-2 has no pad id, and a trimmed micro tokenizer has fewer pieces than its base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.errors import WmtpError
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


def model_proto(path: str | Path) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated
    proto.ParseFromString(load_sentencepiece(path).serialized_model_proto())
    return proto


# Trainer settings that change how text is split; the rest (input files, thread counts) don't.
_TOKENIZING_TRAINER_FIELDS = (
    "model_type",
    "byte_fallback",
    "split_digits",
    "treat_whitespace_as_suffix",
)


def _piece_key(piece: Any) -> tuple[str, float, int]:
    return piece.piece, piece.score, piece.type


def tokenizer_difference(
    a: str | Path, b: str | Path, *, prefix: bool = False, replaced: dict[int, str] | None = None
) -> str | None:
    """None if the two models tokenize identically (same pieces with the same scores and
    kinds at the same ids, same special ids and normalization); else the first difference.

    With `prefix`, `a` is a trimmed copy of `b` (see `trim_tokenizer`): it may have fewer
    pieces, and the ids in `replaced` (`{id: b's piece}`) hold one of `b`'s single-character
    pieces instead (same piece, score and kind).
    """
    facts_a, facts_b = tokenizer_facts(a), tokenizer_facts(b)
    for field, value in facts_a.to_dict().items():
        if value != getattr(facts_b, field) and not (prefix and field == "vocab_size"):
            return f"{field.replace('_', ' ')} {value} vs {getattr(facts_b, field)}"
    if facts_a.vocab_size > facts_b.vocab_size:
        return f"vocab size {facts_a.vocab_size} vs {facts_b.vocab_size}"
    proto_a, proto_b = model_proto(a), model_proto(b)
    replaced = replaced or {}
    base_pieces = {p.piece: p for p in proto_b.pieces}
    for i, (piece_a, piece_b) in enumerate(zip(proto_a.pieces, proto_b.pieces, strict=False)):
        if i in replaced:
            moved = base_pieces.get(piece_a.piece)
            if (
                piece_b.piece != replaced[i]
                or len(piece_a.piece) != 1
                or moved is None
                or _piece_key(moved) != _piece_key(piece_a)
            ):
                return f"piece {i}: {piece_a.piece!r} is not the recorded replacement"
        elif _piece_key(piece_a) != _piece_key(piece_b):
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
    below `vocab_size`.

    A BPE tokenizer's single characters sit at the end (Llama's from id 29871), so the cut
    removes them. SentencePiece still merges characters it has no piece for, but a
    `tokenizers` BPE (what transformers runs) cannot: it turns them into bytes first and
    would give other ids. So every character that a kept piece is made of, and the
    whitespace piece "▁" (its bytes would decode as a literal "▁", not a space), takes the
    place of the rarest kept merge, whitespace first, then the base's order; those ids are
    reported in `replaced` (`{id: base piece}`).
    """
    from weighted_mtp.storage.atomic import write_bytes

    proto = model_proto(src)
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
    characters = _single_characters(proto)
    del proto.pieces[vocab_size:]
    replaced = _move_in_characters(proto, characters, after=needed, src=src)
    proto.trainer_spec.vocab_size = vocab_size
    write_bytes(dst, proto.SerializeToString())
    return TrimmedTokenizer(tokenizer_facts(dst), replaced)


def _single_characters(proto: Any) -> dict[str, Any]:
    """The normal single-character pieces, whitespace first, then in id order."""
    singles = [
        p for p in proto.pieces if p.type == proto.SentencePiece.NORMAL and len(p.piece) == 1
    ]
    singles.sort(key=lambda p: p.piece != WHITESPACE_PIECE)
    return {p.piece: _copied(p) for p in singles}


def _copied(piece: Any) -> Any:
    copy = type(piece)()
    copy.CopyFrom(piece)
    return copy


def missing_characters(proto: Any) -> list[str]:
    """Characters that normal pieces are made of but that have no piece of their own."""
    have = {p.piece for p in proto.pieces}
    normal = proto.SentencePiece.NORMAL
    used = {c for p in proto.pieces if p.type == normal for c in p.piece}
    return sorted(used - have)


def _move_in_characters(
    proto: Any, characters: dict[str, Any], *, after: int, src: str | Path
) -> dict[int, str]:
    """Put each missing character (see `trim_tokenizer`) in place of the rarest kept merge;
    `{id: the merge it replaced}`."""
    normal = proto.SentencePiece.NORMAL
    slots = [
        i
        for i in range(len(proto.pieces) - 1, after, -1)
        if proto.pieces[i].type == normal and len(proto.pieces[i].piece) > 1
    ]
    replaced: dict[int, str] = {}
    while missing := _characters_to_move_in(proto, characters, src):
        if not slots:
            raise WmtpError(
                f"no room for the {len(missing)} single characters the kept pieces need",
                path=src,
                hint="choose a larger vocab size",
            )
        slot = slots.pop(0)
        replaced[slot] = proto.pieces[slot].piece
        proto.pieces[slot].CopyFrom(characters[missing[0]])
    return replaced


def _characters_to_move_in(proto: Any, characters: dict[str, Any], src: str | Path) -> list[str]:
    missing = set(missing_characters(proto))
    if WHITESPACE_PIECE in characters and all(p.piece != WHITESPACE_PIECE for p in proto.pieces):
        missing.add(WHITESPACE_PIECE)
    absent = sorted(missing - characters.keys())
    if absent:
        raise WmtpError(
            f"pieces use characters the tokenizer has no piece for: {absent[:5]}", path=src
        )
    return [c for c in characters if c in missing]
