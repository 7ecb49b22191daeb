"""Hugging Face export: a standard Llama folder whose logits equal the adapter's head 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.export_hf import export_hf, interleaved_to_half_split
from weighted_mtp.storage.layout import META_MODEL, MICRO_MTP, REFERENCE_MODEL

GQA_META = {
    "dim": 128,
    "n_layers": 4,
    "n_heads": 4,
    "n_kv_heads": 2,
    "multiple_of": 32,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "n_future_tokens": 2,
    "max_seq_len": 256,
    "vocab_size": -1,
}


@pytest.fixture
def converted_meta(layout, tmp_path, sp_model_path):
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.models.convert import convert_model
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    mirror = write_meta_mirror(
        tmp_path / "mirror", tokenizer_model=sp_model_path, params=dict(GQA_META)
    )
    download_model(layout, load_catalog(), META_MODEL, mirror=mirror)
    convert_model(layout, META_MODEL)
    return layout


def test_export_loads_with_auto_classes_and_matches_head_0(converted_meta, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from weighted_mtp.models.adapter import load_mtp_model
    from weighted_mtp.models.tokenizer import load_sentencepiece

    out = export_hf(converted_meta, META_MODEL, tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer_config.json",
        "README.md",
    }
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert exported.config.num_hidden_layers == 3  # 2 trunk blocks + head 0
    assert exported.config.num_key_value_heads == 2
    adapter = load_mtp_model(converted_meta.model(META_MODEL).root)
    tokens = torch.randint(0, 8320, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = adapter(tokens, return_all_heads=False)[:, :, 0]
        actual = exported(tokens).logits
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-5

    tokenizer = AutoTokenizer.from_pretrained(out)
    sp = load_sentencepiece(converted_meta.model(META_MODEL).tokenizer_model)
    text = "def add(a, b): return a + b"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2


def test_export_readme_lists_the_left_out_heads(converted_meta, tmp_path):
    out = export_hf(converted_meta, META_MODEL, tmp_path / "export")
    readme = (out / "README.md").read_text()
    assert "extra_heads.0" in readme and "Left out" in readme
    assert "PreTrainedTokenizerFast" in readme
    assert "Checked at export: AutoTokenizer gives SentencePiece's ids on" in readme
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and config["architectures"] == ["LlamaForCausalLM"]


def test_permutation_moves_interleaved_pairs_to_halves():
    # One head of 4 rows: pairs (0, 1) and (2, 3) -> halves [0, 2] and [1, 3].
    weight = torch.arange(4.0)[:, None].repeat(1, 2)
    assert interleaved_to_half_split(weight, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]


def test_export_refuses_a_non_empty_folder(converted_meta, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WmtpError, match="not empty"):
        export_hf(converted_meta, META_MODEL, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_export_leaves_nothing(converted_meta, tmp_path, monkeypatch):
    from weighted_mtp.models import export_hf as module

    def broken(handle, sources):
        yield sources[0].hf_name, handle.get_tensor(sources[0].meta_name)
        raise WmtpError("disk vanished")

    monkeypatch.setattr(module, "hf_tensors", broken)
    with pytest.raises(WmtpError, match="disk vanished"):
        export_hf(converted_meta, META_MODEL, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir() if "export" in p.name) == []


def test_export_rejects_weights_that_disagree_with_params(converted_meta, tmp_path):
    params_path = converted_meta.model(META_MODEL).params
    params = json.loads(params_path.read_text())
    params["n_future_tokens"] = 1
    params_path.write_text(json.dumps(params))
    with pytest.raises(WmtpError, match=r"missing tensor layers\.3\.attention\.wq\.weight"):
        export_hf(converted_meta, META_MODEL, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_of_a_hugging_face_model_points_to_its_folder(layout, tmp_path):
    layout.model(REFERENCE_MODEL).hf_config.write_text("{}")
    with pytest.raises(WmtpError, match="already a Hugging Face Llama"):
        export_hf(layout, REFERENCE_MODEL, tmp_path / "export")
    with pytest.raises(WmtpError, match=f"build it first: wmtp models micro {MICRO_MTP}"):
        export_hf(layout, MICRO_MTP, Path(tmp_path / "export"))


def test_an_export_whose_tokenizer_disagrees_is_not_published(
    converted_meta, tmp_path, monkeypatch
):
    from weighted_mtp.models import hf_tokenizer

    full = hf_tokenizer._merges
    monkeypatch.setattr(hf_tokenizer, "_merges", lambda proto: full(proto)[100:])
    with pytest.raises(WmtpError, match="transformers and SentencePiece disagree on edge case"):
        export_hf(converted_meta, META_MODEL, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir() if "export" in p.name) == []
