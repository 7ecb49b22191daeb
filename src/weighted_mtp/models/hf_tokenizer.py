"""A SentencePiece model as transformers loads it: `tokenizer.json` + `tokenizer_config.json`
that give exactly SentencePiece's ids (BOS first) and decode them back to the same text.

The fast (`tokenizers`) BPE is built here from the model's pieces and scores, not by
transformers' own conversion, which is not exact (measured with transformers 5.24):
- its `LlamaTokenizer` rebuilds a Metaspace pre-tokenizer that adds no dummy prefix when the
  text already starts with a space (`"  two spaces"` loses one), and its merges follow piece
  ids where SentencePiece follows scores;
- special-token strings in text (`"<s>"`) become special ids, where SentencePiece reads text.
So the folder names `PreTrainedTokenizerFast` (transformers 4 and 5), which loads
`tokenizer.json` as written, with `split_special_tokens` so special-token strings are text.

SentencePiece's BPE merges the adjacent pair whose concatenation has the highest score
(leftmost first); `tokenizers`' BPE applies the merge of lowest rank. Ranking every split of
every normal piece by that piece's score gives the same merges, provided every character of
a normal piece has a piece of its own: `tokenizers` turns characters without one into bytes
before merging (`trim_tokenizer` keeps them). Settings this cannot reproduce are refused,
never approximated; `weighted_mtp.models.tokenizer_agreement` checks the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.tokenizer import (
    WHITESPACE_PIECE,
    missing_characters,
    model_proto,
    tokenizer_facts,
)
from weighted_mtp.storage.atomic import write_json, write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The generic fast class: it loads tokenizer.json unchanged (LlamaTokenizer rebuilds it).
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Where tokenizer_config.json keeps the plan's SentencePiece facts. The plan's literal
# top-level `model_type: sentencepiece` is read by transformers as a model type and breaks
# `AutoTokenizer.from_pretrained`.
SENTENCEPIECE_KEY = "sentencepiece"


def _require_reproducible(proto: Any, path: Path) -> None:
    """Refuse, in one line, a model whose tokenization this module cannot reproduce."""
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != trainer.BPE:
        problems.append(f"model type {trainer.ModelType.Name(trainer.model_type)} (not BPE)")
    if normalizer.precompiled_charsmap or proto.denormalizer_spec.precompiled_charsmap:
        problems.append(f"normalization rule {normalizer.name!r} (not identity)")
    if normalizer.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces")
    if not normalizer.escape_whitespaces:
        problems.append("unescaped whitespace")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix")
    if any(p.type == p.USER_DEFINED for p in proto.pieces):
        problems.append("user-defined pieces")
    if missing := missing_characters(proto):
        problems.append(f"pieces built from characters without a piece ({missing[:5]})")
    if problems:
        raise WmtpError(
            "cannot write a transformers tokenizer that gives this SentencePiece model's ids: "
            + ", ".join(problems),
            path=path,
        )


def _merges(proto: Any) -> list[tuple[str, str]]:
    """Every split of every normal piece into two normal pieces, highest score first (then
    lower id, then leftmost split), as SentencePiece's BPE prefers them."""
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == p.NORMAL}
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-proto.pieces[i].score, i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_hf_tokenizer(sp_path: str | Path) -> Tokenizer:
    """The `tokenizers` equivalent of the SentencePiece model at `sp_path`, BOS prepended."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    proto = model_proto(sp_path)
    _require_reproducible(proto, Path(sp_path))
    trainer, add_prefix = proto.trainer_spec, proto.normalizer_spec.add_dummy_prefix
    tokenizer = Tokenizer(
        BPE(
            vocab={p.piece: i for i, p in enumerate(proto.pieces)},
            merges=_merges(proto),
            unk_token=proto.pieces[trainer.unk_id].piece if trainer.unk_id >= 0 else None,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
        )
    )
    escape = [normalizers.Replace(" ", WHITESPACE_PIECE)]
    prefix = [normalizers.Prepend(WHITESPACE_PIECE)] if add_prefix else []
    tokenizer.normalizer = normalizers.Sequence(prefix + escape)
    strip = [decoders.Strip(" ", 1, 0)] if add_prefix else []
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(WHITESPACE_PIECE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            *strip,
        ]
    )
    if trainer.bos_id >= 0:
        bos = proto.pieces[trainer.bos_id].piece
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, trainer.bos_id)]
        )
    return tokenizer


def hf_tokenizer_config(sp_path: str | Path) -> dict[str, Any]:
    """tokenizer_config.json: transformers' settings, and the SentencePiece facts under
    `SENTENCEPIECE_KEY`, which transformers passes through untouched."""
    facts = tokenizer_facts(sp_path)
    proto = model_proto(sp_path)

    def token(i: int | None) -> str | None:
        return proto.pieces[i].piece if i is not None else None

    return {
        "tokenizer_class": TOKENIZER_CLASS,
        "bos_token": token(facts.bos_id),
        "eos_token": token(facts.eos_id),
        "unk_token": token(facts.unk_id),
        "pad_token": token(facts.pad_id),
        "add_bos_token": facts.bos_id is not None,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        SENTENCEPIECE_KEY: {
            "model_file": Path(sp_path).name,
            "model_type": "bpe",
            **facts.to_dict(),
        },
    }


def write_hf_tokenizer(
    folder: str | Path, sp_path: str | Path, *, keep_upstream_json: bool = False
) -> list[Path]:
    """Write `tokenizer.json` and `tokenizer_config.json` for the SentencePiece model at
    `sp_path` into `folder` (atomically); returns the two paths. With `keep_upstream_json`,
    a `tokenizer.json` already there is an upstream download (a raw file): it is kept as it
    is, and the agreement check judges it."""
    folder = Path(folder)
    json_path, config_path = folder / TOKENIZER_JSON, folder / TOKENIZER_CONFIG
    if not (keep_upstream_json and json_path.is_file()):
        write_text(json_path, build_hf_tokenizer(sp_path).to_str())
    write_json(config_path, hf_tokenizer_config(sp_path))
    return [json_path, config_path]
