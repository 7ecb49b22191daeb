from pathlib import Path

import pytest

from weighted_mtp.data.tokens import Tokenizer, resolve_tokenizer
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import META_MODEL


def test_batched_counts_equal_single_counts(sp_model_path: Path):
    tokenizer = Tokenizer(sp_model_path, threads=2)
    texts = ["def f(x):\n    return x + 1\n", "", "print('héllo')" * 20]
    assert tokenizer.counts(texts) == [tokenizer.count(t) for t in texts]


def test_default_tokenizer_is_the_meta_models(layout, sp_model_path: Path):
    with pytest.raises(WmtpError, match=r"download the model .* or pass --tokenizer"):
        resolve_tokenizer(layout, None)
    target = layout.model(META_MODEL).tokenizer_model
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(sp_model_path.read_bytes())
    assert resolve_tokenizer(layout, None) == target


def test_given_tokenizer_must_exist_and_be_sentencepiece(layout, tmp_path: Path):
    with pytest.raises(WmtpError, match="tokenizer not found"):
        resolve_tokenizer(layout, tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(WmtpError, match="not a SentencePiece model"):
        Tokenizer(junk)
