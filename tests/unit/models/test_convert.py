from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import TINY_META_PARAMS, edited_tokenizer
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.models.convert import convert_model


def _raw_hashes(paths):
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(paths.raw.rglob("*"))
        if p.is_file()
    }


def _raw_meta_state(paths):
    return torch.load(paths.raw_checkpoint_dir / "consolidated.pth", weights_only=True)


def _save_meta_state(paths, state):
    torch.save(state, paths.raw_checkpoint_dir / "consolidated.pth")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_meta_conversion_is_exact_and_keeps_metas_names(meta_raw, dtype):
    metadata = convert_model(_layout(meta_raw), "meta-llama-mtp", dtype=dtype)
    source = _raw_meta_state(meta_raw)
    converted = load_file(meta_raw.weights)
    assert set(converted) == set(source)
    for name, tensor in source.items():
        assert converted[name].dtype == getattr(torch, dtype)
        assert torch.equal(converted[name], tensor.to(getattr(torch, dtype))), name
    assert metadata["dtype"] == dtype and metadata["source_dtype"] == "bfloat16"
    assert metadata["parameter_count"] == sum(t.numel() for t in source.values())
    with safe_open(meta_raw.weights, framework="pt") as handle:
        assert handle.metadata()["format"] == "pt"


def _layout(paths):
    from weighted_mtp.storage.layout import Layout

    return Layout(paths.root.parent.parent)


def test_meta_outputs_configs_and_checksums(meta_raw):
    metadata = convert_model(_layout(meta_raw), "meta-llama-mtp")
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"],
        cwd=meta_raw.safetensors_dir,
        capture_output=True,
        text=True,
    )
    assert sums.returncode == 0 and "model.safetensors: OK" in sums.stdout
    digest = hashlib.sha256(meta_raw.weights.read_bytes()).hexdigest()
    assert metadata["weights"] == {
        "path": "safetensors/model.safetensors",
        "size": meta_raw.weights.stat().st_size,
        "sha256": digest,
    }
    raw_params = meta_raw.raw_checkpoint_dir / "params.json"
    assert meta_raw.params.read_bytes() == raw_params.read_bytes()
    adapter = yaml.safe_load(meta_raw.adapter_config.read_text())
    for key in (
        "dim",
        "n_layers",
        "n_heads",
        "n_future_tokens",
        "vocab_size",
        "rope_theta",
        "norm_eps",
        "max_seq_len",
    ):
        assert adapter[key] == TINY_META_PARAMS[key]
    assert adapter["intermediate_size"] == 192  # 2/3 * 4 * 64 = 170, rounded up to 32s
    assert adapter["dtype"] == "float16"
    tokenizer_config = json.loads(meta_raw.tokenizer_config.read_text())
    assert "model_type" not in tokenizer_config  # transformers misreads it
    facts = tokenizer_config["sentencepiece"]
    assert facts["vocab_size"] == metadata["tokenizer"]["vocab_size"] == 8320
    assert "tokenizer/tokenizer.json" in metadata["files"]
    assert (
        metadata["source"]["files"]["7B_1T_4/consolidated.pth"]
        == hashlib.sha256(
            (meta_raw.raw_checkpoint_dir / "consolidated.pth").read_bytes()
        ).hexdigest()
    )
    assert json.loads(meta_raw.metadata.read_text()) == metadata


def test_vocab_size_minus_one_is_taken_from_the_tokenizer(meta_raw):
    params_file = meta_raw.raw_checkpoint_dir / "params.json"
    params_file.write_text(json.dumps({**TINY_META_PARAMS, "vocab_size": -1}))
    convert_model(_layout(meta_raw), "meta-llama-mtp")
    assert yaml.safe_load(meta_raw.adapter_config.read_text())["vocab_size"] == 8320
    assert json.loads(meta_raw.params.read_text())["vocab_size"] == -1  # a byte copy


def _assert_refused(paths, message, dtype="float16"):
    before = _raw_hashes(paths)
    with pytest.raises(WmtpError, match=message) as raised:
        convert_model(_layout(paths), paths.name, dtype=dtype)
    assert "\n" not in raised.value.line()
    assert not paths.weights.exists() and not paths.metadata.exists()
    assert not [p for p in paths.root.rglob("*") if ".wmtp-tmp-" in p.name]
    assert _raw_hashes(paths) == before
    return raised.value


def test_a_pickle_that_runs_code_is_refused(meta_raw):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("touch /tmp/wmtp-pwned",))

    state = _raw_meta_state(meta_raw)
    state["norm.weight"] = RunsCode()
    _save_meta_state(meta_raw, state)
    _assert_refused(meta_raw, "would run code.*consolidated.pth")


def test_a_truncated_checkpoint_is_refused(meta_raw):
    pth = meta_raw.raw_checkpoint_dir / "consolidated.pth"
    pth.write_bytes(pth.read_bytes()[:-4096])
    _assert_refused(meta_raw, "truncated or corrupted.*consolidated.pth")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("layers.1.attention.wq.weight"), "missing tensor layers.1.attention.wq"),
        (
            lambda s: s.update({"extra_heads.5.ffn_norm.weight": torch.ones(64)}),
            "unexpected tensor extra_heads.5.ffn_norm.weight",
        ),
        (
            lambda s: s.update({"norm.weight": torch.ones(65, dtype=torch.bfloat16)}),
            r"tensor norm.weight has shape \[65\], expected \[64\]",
        ),
    ],
)
def test_tensors_that_do_not_match_params_are_refused(meta_raw, edit, message):
    state = _raw_meta_state(meta_raw)
    edit(state)
    _save_meta_state(meta_raw, state)
    _assert_refused(meta_raw, f"does not match params.json: .*{message}")


def test_params_disagreeing_with_the_tensors_is_refused(meta_raw):
    params_file = meta_raw.raw_checkpoint_dir / "params.json"
    params_file.write_text(json.dumps({**TINY_META_PARAMS, "n_future_tokens": 3}))
    _assert_refused(meta_raw, "does not match params.json: missing tensor extra_heads.1")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_refused_naming_the_tensor(meta_raw, bad):
    state = _raw_meta_state(meta_raw)
    state["extra_heads.0.feed_forward.w2.weight"][3, 7] = bad
    _save_meta_state(meta_raw, state)
    _assert_refused(meta_raw, "tensor extra_heads.0.feed_forward.w2.weight contains NaN or Inf")


def test_fp16_overflow_is_refused_and_bfloat16_suggested(meta_raw):
    state = _raw_meta_state(meta_raw)
    state["output.weight"][100, 5] = 70000.0
    _save_meta_state(meta_raw, state)
    error = _assert_refused(meta_raw, "tensor output.weight overflows float16")
    assert "--dtype bfloat16" in error.line()
    convert_model(_layout(meta_raw), "meta-llama-mtp", dtype="bfloat16")
    assert load_file(meta_raw.weights)["output.weight"][100, 5].item() == 70144.0  # bf16 rounding


def test_not_enough_disk_is_refused_before_writing(meta_raw, monkeypatch):
    import shutil

    usage = shutil.disk_usage(meta_raw.root)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=10 << 20))
    _assert_refused(meta_raw, "not enough free disk")


def test_a_tokenizer_of_another_size_is_refused(meta_raw, tmp_path):
    params_file = meta_raw.raw_checkpoint_dir / "params.json"
    params_file.write_text(json.dumps({**TINY_META_PARAMS, "vocab_size": 9000}))
    _assert_refused(meta_raw, "tokenizer has 8320 pieces but params.json says vocab_size 9000")


def test_missing_raw_files_point_to_download(layout):
    with pytest.raises(WmtpError, match=r"not found.*wmtp models download"):
        convert_model(layout, "meta-llama-mtp")
    with pytest.raises(UsageError, match=r"wmtp models micro"):
        convert_model(layout, "micro-mtp")
    with pytest.raises(UsageError, match=r"unknown dtype"):
        convert_model(layout, "meta-llama-mtp", dtype="int8")


# --- the reference model ---------------------------------------------------------------------


def _raw_reference_state(paths):
    state = {}
    for shard in sorted(paths.raw_checkpoint_dir.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
    return state


def test_reference_shards_merge_exactly_without_rotary_buffers(reference_raw, meta_raw):
    metadata = convert_model(_layout(reference_raw), "ref-sheared-llama-2.7b")
    converted = load_file(reference_raw.weights)
    source = _raw_reference_state(reference_raw)
    buffers = {n for n in source if n.endswith("rotary_emb.inv_freq")}
    assert len(buffers) == 2 and not buffers & set(converted)
    assert set(converted) == set(source) - buffers
    for name, tensor in converted.items():
        assert torch.equal(tensor, source[name].to(torch.float16)), name
    assert metadata["dropped_tensors"]["names"] == sorted(buffers)
    assert metadata["source_dtype"] == "float32"
    assert metadata["tokenizer_shared_with"] == "meta-llama-mtp"
    assert "tokenizer_difference" not in metadata
    assert json.loads(reference_raw.hf_config.read_text())["torch_dtype"] == "float16"
    assert (
        subprocess.run(
            ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=reference_raw.safetensors_dir
        ).returncode
        == 0
    )


def test_safetensors_shards_convert_too(layout, sp_model_path, tmp_path):
    from tests.helpers import TINY_REFERENCE_CONFIG
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.synthetic.model_mirrors import write_reference_mirror

    mirror = write_reference_mirror(
        tmp_path / "st",
        tokenizer_model=sp_model_path,
        config=TINY_REFERENCE_CONFIG,
        shard_format="safetensors",
        n_shards=3,
    )
    catalog = tmp_path / "catalog.yaml"  # a fork that publishes safetensors shards
    catalog.write_text(
        "models:\n  ref-sheared-llama-2.7b:\n    repo: me/sheared-safetensors\n    files:\n"
        "      - {path: 'model*.safetensors*', into: raw/reference_model}\n"
        "      - {path: config.json, into: raw/reference_model}\n"
        "      - {path: tokenizer.model, into: tokenizer}\ndatasets: {}\n"
    )
    download_model(layout, load_catalog(catalog), "ref-sheared-llama-2.7b", mirror=mirror)
    metadata = convert_model(layout, "ref-sheared-llama-2.7b", dtype="bfloat16")
    assert "dropped_tensors" not in metadata
    assert metadata["dtype"] == "bfloat16"


def test_a_different_tokenizer_is_recorded_not_shared(reference_raw, meta_raw, tmp_path):
    edited = edited_tokenizer(meta_raw.tokenizer_model, tmp_path / "t.model", 5000, "▁qqqq")
    meta_raw.tokenizer_model.write_bytes(edited.read_bytes())
    metadata = convert_model(_layout(reference_raw), "ref-sheared-llama-2.7b")
    assert metadata["tokenizer_shared_with"] is None
    assert metadata["tokenizer_difference"].startswith("piece 5000")


def test_rotary_buffers_must_match_rope_theta(reference_raw):
    config_file = reference_raw.raw_checkpoint_dir / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "rope_theta": 500000.0}))
    _assert_refused(reference_raw, "rotary buffer .*inv_freq does not match rope_theta 500000")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update({"model.norm.weight": "../../../../etc/passwd"}), "outside"),
        (lambda m: m.pop("lm_head.weight"), "which the index does not list"),
    ],
)
def test_bad_indexes_are_refused(reference_raw, edit, message):
    index_file = reference_raw.raw_checkpoint_dir / "pytorch_model.bin.index.json"
    index = json.loads(index_file.read_text())
    edit(index["weight_map"])
    index_file.write_text(json.dumps(index))
    _assert_refused(reference_raw, message)


def test_a_missing_shard_is_refused(reference_raw):
    (reference_raw.raw_checkpoint_dir / "pytorch_model-00001-of-00002.bin").unlink()
    _assert_refused(reference_raw, "00001-of-00002.bin named by the index is missing")
