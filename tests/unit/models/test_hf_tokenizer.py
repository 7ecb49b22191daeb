"""The transformers tokenizer written next to a SentencePiece model gives SentencePiece's ids.

Compared directly (AutoTokenizer against sentencepiece), on the edge cases and on random
texts built from whitespace runs, code fragments, byte-fallback characters and
special-token strings, for the full tokenizer, the trimmed micro one, and one whose
whitespace pieces have Llama-like scores that do not follow their ids.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from tests.helpers import hf_folder
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
from weighted_mtp.models.tokenizer import model_proto, trim_tokenizer
from weighted_mtp.models.tokenizer_agreement import EDGE_CASES

FRAGMENTS = [" ", "  ", "    ", "\t", "\n", "\r\n", "▁", "<s>", "</s>", "<unk>", "é", "日本", "🎉"]
FRAGMENTS += ["def", " return", "self", "x", "(", ")", ":", "0", "42", "_", "Q", "^", "ab"]


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(FRAGMENTS, k=rng.randint(1, 24))) for _ in range(count)]


def assert_same_ids_and_round_trips(folder: Path, texts: list[str]) -> None:
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids == [sp.bos_id(), *sp.encode(text)], text
        if sp.decode(ids) == text:
            assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_full_tokenizer_matches_sentencepiece(sp_model_path, tmp_path):
    folder = hf_folder(sp_model_path, tmp_path / "full")
    assert_same_ids_and_round_trips(folder, [*EDGE_CASES, *random_texts(600)])


def test_trimmed_tokenizer_matches_sentencepiece(sp_model_path, tmp_path):
    trimmed = trim_tokenizer(sp_model_path, tmp_path / "micro.model", 8000)
    assert trimmed.replaced
    folder = hf_folder(tmp_path / "micro.model", tmp_path / "micro")
    assert_same_ids_and_round_trips(folder, [*EDGE_CASES, *random_texts(600, seed=1)])


def test_merges_follow_scores_not_ids(sp_model_path, tmp_path):
    """Llama's whitespace-run pieces have scores out of line with their ids; SentencePiece
    merges by score, so the tokenizer must too."""
    proto = model_proto(sp_model_path)
    for piece in proto.pieces:
        if piece.type == piece.NORMAL and len(piece.piece) > 1 and set(piece.piece) == {"▁"}:
            piece.score = -1e9
    scored = tmp_path / "scored.model"
    scored.write_bytes(proto.SerializeToString())
    original = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    rescored = spm.SentencePieceProcessor(model_file=str(scored))
    texts = [*EDGE_CASES, *random_texts(600, seed=2)]
    assert any(original.encode(t) != rescored.encode(t) for t in texts)  # the edit matters
    assert_same_ids_and_round_trips(hf_folder(scored, tmp_path / "scored"), texts)


def test_config_keeps_the_sentencepiece_facts_where_transformers_ignores_them(
    sp_model_path, tmp_path
):
    folder = hf_folder(sp_model_path, tmp_path / "full")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "model_type" not in config  # transformers would read it as a model type
    assert config["sentencepiece"] == {
        "model_file": "tokenizer.model",
        "model_type": "bpe",
        "vocab_size": 8320,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 0,
        "pad_id": None,
    }
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert len(tokenizer) == 8320


def test_tokenizer_json_is_the_same_bytes_in_every_process(sp_model_path, tmp_path):
    """The storage records its hash, so hash-map order must not leak into it."""
    script = (
        "import sys; from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer; "
        "write_hf_tokenizer(sys.argv[1], sys.argv[2])"
    )
    outputs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / run), str(sp_model_path)], check=True
        )
        outputs.append((tmp_path / run / "tokenizer.json").read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda p: setattr(p.normalizer_spec, "remove_extra_whitespaces", True), "extra_white"),
        (lambda p: setattr(p.trainer_spec, "model_type", p.trainer_spec.UNIGRAM), "UNIGRAM"),
        (lambda p: setattr(p.pieces[300], "type", p.pieces[300].USER_DEFINED), "user-defined"),
        (lambda p: p.pieces.pop(), "without a piece"),
    ],
)
def test_settings_it_cannot_reproduce_are_refused(sp_model_path, tmp_path, edit, named):
    proto = model_proto(sp_model_path)
    if named == "without a piece":  # drop a character other pieces are made of
        last = proto.pieces[-1].piece
        assert any(last in p.piece for p in proto.pieces[:-1] if len(p.piece) > 1)
    edit(proto)
    model = tmp_path / "edited.model"
    model.write_bytes(proto.SerializeToString())
    with pytest.raises(WmtpError, match=named):
        write_hf_tokenizer(tmp_path, model)
    assert not (tmp_path / "tokenizer.json").exists()
