"""Tiny upstream-format fixtures (real tensor names, random values) for the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_META_PARAMS = {
    "dim": 64,
    "n_layers": 3,
    "n_heads": 2,
    "multiple_of": 32,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "n_future_tokens": 2,
    "vocab_size": 8320,
    "max_seq_len": 512,
}
TINY_REFERENCE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 8320,
    "torch_dtype": "float32",
}


@pytest.fixture
def meta_mirror(tmp_path: Path, sp_model_path: Path) -> Path:
    from weighted_mtp.synthetic.models import write_meta_mirror

    return write_meta_mirror(
        tmp_path / "meta-mirror", tokenizer_model=sp_model_path, params=dict(TINY_META_PARAMS)
    )


@pytest.fixture
def reference_mirror(tmp_path: Path, sp_model_path: Path) -> Path:
    from weighted_mtp.synthetic.models import write_reference_mirror

    return write_reference_mirror(
        tmp_path / "ref-mirror", tokenizer_model=sp_model_path, config=dict(TINY_REFERENCE_CONFIG)
    )


def hf_folder(sp_path: Path, folder: Path) -> Path:
    """A tokenizer folder as wmtp writes it: the SentencePiece model and its transformers
    files (tokenizer.json, tokenizer_config.json)."""
    import shutil

    from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer

    folder.mkdir(parents=True)
    shutil.copyfile(sp_path, folder / "tokenizer.model")
    write_hf_tokenizer(folder, folder / "tokenizer.model")
    return folder


def edited_tokenizer(source: Path, out: Path, piece_id: int, new_piece: str) -> Path:
    """A copy of a SentencePiece model with one piece renamed (a 'different' tokenizer)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(source.read_bytes())
    proto.pieces[piece_id].piece = new_piece
    out.write_bytes(proto.SerializeToString())
    return out


@pytest.fixture
def catalog():
    from weighted_mtp.catalog import load_catalog

    return load_catalog()


@pytest.fixture
def meta_raw(layout, catalog, meta_mirror):
    """The tiny Meta model downloaded (from its mirror) into `layout`; returns its paths."""
    from weighted_mtp.models.download import download_model

    download_model(layout, catalog, "meta-llama-mtp", mirror=meta_mirror)
    return layout.model("meta-llama-mtp")


@pytest.fixture
def reference_raw(layout, catalog, reference_mirror):
    from weighted_mtp.models.download import download_model

    download_model(layout, catalog, "ref-sheared-llama-2.7b", mirror=reference_mirror)
    return layout.model("ref-sheared-llama-2.7b")


def flip_byte(path: Path, offset: int) -> None:
    """Flip every bit of one byte (negative offsets count from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
