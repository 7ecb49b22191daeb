from __future__ import annotations

import shutil

import pytest
import sentencepiece as spm

from tests.helpers import edited_tokenizer
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.tokenizer import tokenizer_difference, tokenizer_facts


def test_facts_are_read_from_the_model(sp_model_path):
    facts = tokenizer_facts(sp_model_path)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    assert facts.vocab_size == sp.vocab_size() == 8320
    assert (facts.unk_id, facts.bos_id, facts.eos_id, facts.pad_id) == (0, 1, 2, None)


def test_identical_copies_have_no_difference(sp_model_path, tmp_path):
    copy = shutil.copy(sp_model_path, tmp_path / "copy.model")
    assert tokenizer_difference(sp_model_path, copy) is None


def test_one_renamed_piece_is_a_difference(sp_model_path, tmp_path):
    other = edited_tokenizer(sp_model_path, tmp_path / "other.model", 4000, "▁zzzzzz")
    assert tokenizer_difference(sp_model_path, other).startswith("piece 4000")


def test_a_changed_score_is_a_difference(sp_model_path, tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model_path.read_bytes())
    proto.pieces[300].score += 1.0
    other = tmp_path / "scored.model"
    other.write_bytes(proto.SerializeToString())
    assert tokenizer_difference(sp_model_path, other).startswith("piece 300")


def test_a_smaller_vocabulary_is_a_difference(sp_model_path, tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model_path.read_bytes())
    del proto.pieces[8000:]
    other = tmp_path / "small.model"
    other.write_bytes(proto.SerializeToString())
    assert tokenizer_difference(sp_model_path, other) == "vocab size 8320 vs 8000"


def test_garbage_is_one_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(WmtpError, match="not a SentencePiece model"):
        tokenizer_facts(bad)
    with pytest.raises(WmtpError, match="not found"):
        tokenizer_facts(tmp_path / "missing.model")
