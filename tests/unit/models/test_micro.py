"""Micro models: slicing from converted bases, random init, metadata, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.models.micro import MicroSize, build_micro
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file
from weighted_mtp.storage.layout import META_MODEL, MICRO_MTP, MICRO_REF, REFERENCE_MODEL

# A base with grouped-query attention and wider heads than the micro model, so slicing must
# pick heads and rotary pairs, not just leading rows.
GQA_META = {
    "dim": 128,
    "n_layers": 4,
    "n_heads": 4,
    "n_kv_heads": 2,
    "multiple_of": 32,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "n_future_tokens": 2,
    "max_seq_len": 256,
    "vocab_size": -1,
}
TINY_REF = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "vocab_size": 8320,
}
SMALL_MTP = MicroSize(dim=32, n_layers=3, n_heads=2, vocab_size=8000, n_future_tokens=2)
SMALL_REF = MicroSize(dim=32, n_layers=2, n_heads=2, vocab_size=8000)


def converted(layout, name: str, tmp_path: Path, sp_model_path: Path, spec=None) -> Path:
    """Download `name` from a synthetic mirror and convert it, as `wmtp build` would."""
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.models.convert import convert_model
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror, write_reference_mirror

    if name == META_MODEL:
        mirror = write_meta_mirror(
            tmp_path / "mirror-meta", tokenizer_model=sp_model_path, params=spec
        )
    else:
        mirror = write_reference_mirror(
            tmp_path / "mirror-ref", tokenizer_model=sp_model_path, config=spec
        )
    download_model(layout, load_catalog(), name, mirror=mirror)
    convert_model(layout, name)
    return layout.model(name).weights


def rows(tensor: torch.Tensor, index: list[int]) -> torch.Tensor:
    return tensor.index_select(0, torch.tensor(index))


def test_slice_takes_leading_heads_pairs_and_blocks_in_metas_layout(
    layout, tmp_path, sp_model_path
):
    base_file = converted(layout, META_MODEL, tmp_path, sp_model_path, GQA_META)
    metadata = build_micro(layout, MICRO_MTP, size=SMALL_MTP)
    base = load_file(base_file)
    micro = load_file(layout.model(MICRO_MTP).weights)
    assert metadata["init"] == "slice"
    assert all(t.dtype == torch.float16 for t in micro.values())

    assert torch.equal(micro["tok_embeddings.weight"], base["tok_embeddings.weight"][:8000, :32])
    assert torch.equal(micro["norm.weight"], base["norm.weight"][:32])
    # Base head_dim 32, micro 16: head h keeps rows h*32 .. h*32+15 (its first 8 pairs).
    q_rows = [*range(0, 16), *range(32, 48)]
    kv_rows = list(range(16))  # 2 heads -> 1 kv head, as the base's 4 -> 2
    # Micro layers.0 is trunk block 0; micro layers.1 is head 0 = the base's layers.2.
    for micro_block, base_block in (
        ("layers.0", "layers.0"),
        ("layers.1", "layers.2"),
        ("extra_heads.0", "extra_heads.0"),
    ):

        def pair(suffix, mb=micro_block, bb=base_block):
            return micro[f"{mb}.{suffix}"], base[f"{bb}.{suffix}"]

        m, b = pair("attention.wq.weight")
        assert torch.equal(m, rows(b, q_rows)[:, :32])
        m, b = pair("attention.wk.weight")
        assert m.shape == (16, 32) and torch.equal(m, rows(b, kv_rows)[:, :32])
        m, b = pair("attention.wo.weight")
        assert torch.equal(m, b[:32].index_select(1, torch.tensor(q_rows)))
        m, b = pair("feed_forward.w2.weight")
        assert torch.equal(m, b[:32, : m.shape[1]])
        m, b = pair("ffn_norm.weight")
        assert torch.equal(m, b[:32])


def test_slice_keeps_half_split_rotary_pairs_in_hugging_face_layout(
    layout, tmp_path, sp_model_path
):
    base_file = converted(layout, REFERENCE_MODEL, tmp_path, sp_model_path, dict(TINY_REF))
    build_micro(layout, MICRO_REF, size=SMALL_REF)
    base = load_file(base_file)
    micro = load_file(layout.model(MICRO_REF).weights)
    # Base head_dim 32 split in halves of 16; micro keeps pairs 0..7: rows i and 16 + i.
    q_rows = [*range(0, 8), *range(16, 24), *range(32, 40), *range(48, 56)]
    q = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(micro[q], rows(base[q], q_rows)[:, :32])
    v = "model.layers.1.self_attn.v_proj.weight"
    assert torch.equal(micro[v], rows(base[v], [*range(0, 16), *range(32, 48)])[:, :32])
    assert torch.equal(micro["lm_head.weight"], base["lm_head.weight"][:8000, :32])


def test_slice_reads_slices_never_whole_tensors(layout, tmp_path, sp_model_path, monkeypatch):
    import safetensors

    converted(layout, META_MODEL, tmp_path, sp_model_path, GQA_META)
    opened = []

    class SliceOnly:
        def __init__(self, handle):
            self._handle = handle

        def __enter__(self):
            self._handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def get_tensor(self, name):
            raise AssertionError(f"read all of {name}")

        def __getattr__(self, attr):
            return getattr(self._handle, attr)

    real = safetensors.safe_open

    def spy(path, *args, **kwargs):
        opened.append(Path(path))
        return SliceOnly(real(path, *args, **kwargs))

    monkeypatch.setattr(safetensors, "safe_open", spy)
    build_micro(layout, MICRO_MTP, size=SMALL_MTP)
    assert layout.model(META_MODEL).weights in opened


def test_micro_metadata_records_source_init_and_trimming(layout, tmp_path, sp_model_path):
    base_file = converted(layout, META_MODEL, tmp_path, sp_model_path, GQA_META)
    metadata = build_micro(layout, MICRO_MTP, size=SMALL_MTP, seed=5)
    paths = layout.model(MICRO_MTP)
    assert metadata["source"] == {"model": META_MODEL, "sha256": sha256_file(base_file)}
    assert metadata["target_device"] == "mps" and metadata["dtype"] == "float16"
    assert (metadata["init"], metadata["seed"]) == ("slice", 5)
    assert metadata["tokenizer_shared_with"] == META_MODEL
    assert metadata["tokenizer_trimmed"]["base_vocab_size"] == 8320
    assert metadata["tokenizer"]["vocab_size"] == 8000
    assert metadata["weights"]["sha256"] == sha256_file(paths.weights)
    assert read_sha256sums(paths.sha256sums) == {"model.safetensors": sha256_file(paths.weights)}
    assert set(metadata["files"]) == {
        "configs/params.json",
        "configs/meta_adapter.yaml",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    }
    assert metadata["parameter_count"] == sum(t.numel() for t in load_file(paths.weights).values())


def test_random_init_is_deterministic_per_seed(layout, sp_model_path):
    import shutil

    shutil.copyfile(sp_model_path, layout.model(REFERENCE_MODEL).tokenizer_model)
    paths = layout.model(MICRO_REF)
    first = build_micro(layout, MICRO_REF, seed=7, size=SMALL_REF)
    again = build_micro(layout, MICRO_REF, seed=7, size=SMALL_REF)
    other = build_micro(layout, MICRO_REF, seed=8, size=SMALL_REF)
    assert first["init"] == "random" and first["source"] == {
        "model": REFERENCE_MODEL,
        "sha256": None,
    }
    assert first["weights"]["sha256"] == again["weights"]["sha256"]
    assert other["weights"]["sha256"] != first["weights"]["sha256"]
    assert other["weights"]["sha256"] == sha256_file(paths.weights)
    # Only the reference's tokenizer is there: sharing with Meta's is not established.
    assert first["tokenizer_shared_with"] is None and "tokenizer_difference" in first


def test_micro_mtp_at_the_real_size_from_the_synthetic_base(layout, tmp_path, sp_model_path):
    from weighted_mtp.models.adapter import load_mtp_model

    converted(layout, META_MODEL, tmp_path, sp_model_path)
    metadata = build_micro(layout, MICRO_MTP)
    paths = layout.model(MICRO_MTP)
    assert metadata["init"] == "slice"
    assert paths.weights.stat().st_size < 50 * 2**20
    model = load_mtp_model(paths.root)
    with torch.no_grad():
        assert model(torch.tensor([[1, 5, 9]])).shape == (1, 3, 4, 8000)


def test_vocab_larger_than_the_base_cannot_be_sliced(layout, tmp_path, sp_model_path):
    converted(layout, META_MODEL, tmp_path, sp_model_path, GQA_META)
    too_big = MicroSize(dim=32, n_layers=3, n_heads=2, vocab_size=9000, n_future_tokens=2)
    with pytest.raises(WmtpError, match="micro vocab_size 9000 is larger than meta-llama-mtp's"):
        build_micro(layout, MICRO_MTP, size=too_big)
    paths = layout.model(MICRO_MTP)
    assert not paths.metadata.exists() and not paths.weights.exists()


def test_slice_needs_a_converted_base(layout, sp_model_path):
    import shutil

    shutil.copyfile(sp_model_path, layout.model(META_MODEL).tokenizer_model)
    with pytest.raises(WmtpError, match="meta-llama-mtp is not converted"):
        build_micro(layout, MICRO_MTP, init="slice")
    assert not any(layout.model(MICRO_MTP).safetensors_dir.iterdir())


def test_micro_needs_the_base_tokenizer(layout):
    with pytest.raises(WmtpError, match="shares meta-llama-mtp's tokenizer, which is missing"):
        build_micro(layout, MICRO_MTP, init="random")


def test_bad_names_and_inits_are_usage_errors(layout, sp_model_path):
    import shutil

    shutil.copyfile(sp_model_path, layout.model(META_MODEL).tokenizer_model)
    with pytest.raises(UsageError, match="not a micro model"):
        build_micro(layout, META_MODEL)
    with pytest.raises(UsageError, match="unknown init"):
        build_micro(layout, MICRO_MTP, init="zeros")


def test_verify_passes_on_sliced_micro_models_and_catches_tampering(
    layout, tmp_path, sp_model_path
):
    from weighted_mtp.models.verify import verify_model
    from weighted_mtp.storage.freshness import is_current

    converted(layout, META_MODEL, tmp_path, sp_model_path, GQA_META)
    converted(layout, REFERENCE_MODEL, tmp_path, sp_model_path, dict(TINY_REF))
    build_micro(layout, MICRO_MTP, size=SMALL_MTP)
    metadata = build_micro(layout, MICRO_REF, size=SMALL_REF)
    assert metadata["tokenizer_shared_with"] == META_MODEL
    for name in (MICRO_MTP, MICRO_REF):
        report = verify_model(layout, name)
        assert report.ok, report.to_dict()
        assert is_current(layout, name)

    weights = layout.model(MICRO_REF).weights
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not verify_model(layout, MICRO_REF).ok


def test_verify_passes_on_random_micro_models(layout, sp_model_path):
    import shutil

    from weighted_mtp.models.verify import verify_model

    for base in (META_MODEL, REFERENCE_MODEL):
        shutil.copyfile(sp_model_path, layout.model(base).tokenizer_model)
    for name in (MICRO_MTP, MICRO_REF):
        build_micro(layout, name, size=SMALL_MTP if name == MICRO_MTP else SMALL_REF)
        report = verify_model(layout, name)
        assert report.ok, report.to_dict()


def test_micro_command_as_a_user_runs_it(tmp_path, sp_model_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from tests.helpers import cli_error, invoke
    from weighted_mtp.cli import app
    from weighted_mtp.storage.layout import Layout

    root = tmp_path / "storage"
    assert invoke("storage", "init", root=root).exit_code == 0
    no_tokenizer = cli_error("models", "micro", "micro-mtp", root=root)
    assert no_tokenizer.exit_code == 1
    assert "run `wmtp models download meta-llama-mtp` first" in no_tokenizer.line()

    shutil.copyfile(sp_model_path, Layout(root).model(META_MODEL).tokenizer_model)
    runner = CliRunner()
    built = runner.invoke(
        app, ["--root", str(root), "models", "micro", "micro-mtp", "--seed", "4", "--json"]
    )
    assert built.exit_code == 0, built.output
    metadata = json.loads(built.stdout)
    assert (metadata["init"], metadata["seed"], metadata["dtype"]) == ("random", 4, "float16")
    verified = runner.invoke(app, ["--root", str(root), "models", "verify", "micro-mtp"])
    assert verified.exit_code == 0, verified.output
    exported = runner.invoke(
        app, ["--root", str(root), "models", "export-hf", "micro-mtp", str(tmp_path / "hf")]
    )
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "hf" / "model.safetensors").is_file()


# The trimmed tokenizer (models/tokenizer.trim_tokenizer), as micro models use it.


def test_trimming_refuses_cuts_that_would_lose_text(tmp_path, sp_model_path):
    from sentencepiece import sentencepiece_model_pb2

    from weighted_mtp.models.tokenizer import trim_tokenizer

    with pytest.raises(WmtpError, match="cannot trim the tokenizer to 9000 pieces: it has 8320"):
        trim_tokenizer(sp_model_path, tmp_path / "a.model", 9000)
    with pytest.raises(WmtpError, match=r"piece 258 \('<0xFF>'\) is a special or byte piece"):
        trim_tokenizer(sp_model_path, tmp_path / "b.model", 200)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model_path.read_bytes())
    proto.trainer_spec.byte_fallback = False
    del proto.pieces[3:259]  # the <0xNN> pieces
    no_bytes = tmp_path / "no-bytes.model"
    no_bytes.write_bytes(proto.SerializeToString())
    with pytest.raises(WmtpError, match="no byte fallback"):
        trim_tokenizer(no_bytes, tmp_path / "c.model", 8000)
    assert not any((tmp_path / n).exists() for n in ("a.model", "b.model", "c.model"))


def test_trimming_moves_in_the_characters_the_kept_pieces_are_made_of(tmp_path, sp_model_path):
    from weighted_mtp.models.tokenizer import (
        WHITESPACE_PIECE,
        missing_characters,
        model_proto,
        tokenizer_difference,
        trim_tokenizer,
    )

    trimmed = trim_tokenizer(sp_model_path, tmp_path / "full.model", 8320)
    assert trimmed.replaced == {}
    assert tokenizer_difference(tmp_path / "full.model", sp_model_path) is None
    cut = trim_tokenizer(sp_model_path, tmp_path / "cut.model", 8000)
    proto, base = model_proto(tmp_path / "cut.model"), model_proto(sp_model_path)
    # Every character used by a kept piece has a piece of its own, whitespace at the end.
    assert missing_characters(proto) == [] and missing_characters(base) == []
    assert proto.pieces[7999].piece == WHITESPACE_PIECE
    # The slots are the rarest merges, from the end down, and hold the base's characters.
    assert sorted(cut.replaced) == list(range(8000 - len(cut.replaced), 8000))
    assert all(base.pieces[i].piece == piece for i, piece in cut.replaced.items())
    assert all(len(proto.pieces[i].piece) == 1 for i in cut.replaced)
    assert (
        tokenizer_difference(
            tmp_path / "cut.model", sp_model_path, prefix=True, replaced=cut.replaced
        )
        is None
    )
    wrong = dict(cut.replaced)
    wrong[7000] = base.pieces[7000].piece
    assert "piece 7000" in tokenizer_difference(
        tmp_path / "cut.model", sp_model_path, prefix=True, replaced=wrong
    )
