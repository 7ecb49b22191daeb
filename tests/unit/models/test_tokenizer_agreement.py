"""The agreement check passes on a correct folder and names the first text it fails on."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import hf_folder
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
from weighted_mtp.models.tokenizer_agreement import (
    EDGE_CASES,
    Sample,
    agreement_corpus,
    check_agreement,
)


def edge_samples() -> list[Sample]:
    return [Sample(f"edge case {i}", text) for i, text in enumerate(EDGE_CASES)]


def test_a_folder_written_by_wmtp_agrees(sp_model_path, tmp_path):
    folder = hf_folder(sp_model_path, tmp_path / "tok")
    agreement = check_agreement(folder, folder / "tokenizer.model", edge_samples())
    assert agreement.texts == len(EDGE_CASES)
    # SentencePiece does not round-trip its own "▁" (it reads as a space); all else does.
    assert agreement.round_trips == len(EDGE_CASES) - 1
    assert f"on {len(EDGE_CASES)} texts" in agreement.detail()


def test_transformers_own_llama_conversion_is_caught(sp_model_path, tmp_path):
    """What the export wrote before: LlamaTokenizer converted by transformers."""
    folder = tmp_path / "llama"
    folder.mkdir()
    shutil.copyfile(sp_model_path, folder / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(WmtpError, match="disagree on edge case") as caught:
        check_agreement(folder, folder / "tokenizer.model", edge_samples())
    assert " vs [1," in str(caught.value)


def test_a_wrong_decoder_is_caught(sp_model_path, tmp_path):
    folder = hf_folder(sp_model_path, tmp_path / "tok")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["decoder"]["decoders"].pop()  # no longer strips the dummy-prefix space
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(WmtpError, match="transformers decodes edge case 1 "):
        check_agreement(folder, folder / "tokenizer.model", edge_samples())


def test_the_plans_literal_config_is_one_clear_error(sp_model_path, tmp_path):
    folder = hf_folder(sp_model_path, tmp_path / "tok")
    (folder / "tokenizer.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(model_type="sentencepiece", tokenizer_class="LlamaTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(WmtpError, match="transformers cannot load the tokenizer"):
        check_agreement(folder, folder / "tokenizer.model", edge_samples())


def test_corpus_holds_every_small_set_prompt_and_response(layout):
    small = layout.small("mbpp")
    small.root.mkdir(parents=True, exist_ok=True)
    records = [{"prompt": f"p{i}", "response": f"  r{i}\n", "metadata": {}} for i in range(3)]
    small.split("test").write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = agreement_corpus(layout)
    assert [s.text for s in corpus[: len(EDGE_CASES)]] == list(EDGE_CASES)
    assert [s.text for s in corpus[len(EDGE_CASES) :]] == [
        "p0",
        "  r0\n",
        "p1",
        "  r1\n",
        "p2",
        "  r2\n",
    ]
    assert corpus[-1].where == "datasets_local_small/mbpp_small/test_small.jsonl line 3 response"


def test_a_disagreement_names_the_small_set_record(sp_model_path, tmp_path, layout):
    folder = hf_folder(sp_model_path, tmp_path / "tok")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if m != ["▁", "r"]]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    small = layout.small("mbpp")
    small.root.mkdir(parents=True, exist_ok=True)
    small.split("test").write_text(json.dumps({"prompt": "x", "response": "r"}) + "\n")
    with pytest.raises(WmtpError, match=r"mbpp_small/test_small\.jsonl line 1 response 'r'"):
        check_agreement(folder, folder / "tokenizer.model", agreement_corpus(layout))


def test_write_returns_both_files(sp_model_path, tmp_path):
    folder = hf_folder(sp_model_path, tmp_path / "tok")
    written = write_hf_tokenizer(folder, folder / "tokenizer.model")
    assert [p.name for p in written] == ["tokenizer.json", "tokenizer_config.json"]
