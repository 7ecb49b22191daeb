from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import flip_byte
from weighted_mtp.models.convert import convert_model
from weighted_mtp.models.safetensors_stream import save_tensors
from weighted_mtp.models.verify import verify_model
from weighted_mtp.storage.freshness import is_current
from weighted_mtp.storage.hashing import sha256_file, write_sha256sums


@pytest.fixture
def meta(layout, meta_raw):
    convert_model(layout, "meta-llama-mtp")
    return meta_raw


@pytest.fixture
def reference(layout, meta_raw, reference_raw):
    convert_model(layout, "ref-sheared-llama-2.7b")
    return reference_raw


def _failed(report):
    return {check.name for check in report.checks if not check.ok}


def test_converted_bases_pass_and_are_stamped(layout, meta, reference):
    for paths in (meta, reference):
        report = verify_model(layout, paths.name)
        assert report.ok, report.to_dict()
        assert is_current(layout, paths.name)
    names = {c.name for c in verify_model(layout, reference.name).checks}
    assert {
        "SHA256SUMS",
        "tensor names and shapes",
        "tensor dtypes",
        "no NaN/Inf",
        "rope_theta",
        "tokenizer",
        "tokenizer shared",
        "tokenizer in transformers",
        "configs agree",
    } <= names


def test_micro_models_pass(layout, meta, reference):
    from weighted_mtp.models.micro import build_micro

    for name in ("micro-mtp", "micro-ref"):
        build_micro(layout, name, init="random")
        report = verify_model(layout, name)
        assert report.ok, report.to_dict()


@pytest.mark.parametrize("offset", [3, 40, 5000, -1])
def test_a_flipped_byte_anywhere_in_the_weights_fails(layout, meta, offset):
    flip_byte(meta.weights, offset)
    report = verify_model(layout, meta.name)
    assert not report.ok
    assert "SHA256SUMS" in _failed(report)
    assert not is_current(layout, meta.name)


@pytest.mark.parametrize(
    "relpath",
    [
        "configs/params.json",
        "configs/meta_adapter.yaml",
        "tokenizer/tokenizer.model",
        "tokenizer/tokenizer_config.json",
        "tokenizer/tokenizer.json",
    ],
)
def test_a_flipped_byte_in_configs_or_tokenizer_fails(layout, meta, relpath):
    flip_byte(meta.file(relpath), -2)
    report = verify_model(layout, meta.name)
    assert "recorded file hashes" in _failed(report)


def test_a_tokenizer_folder_transformers_reads_differently_fails(layout, meta):
    """A folder in the older format: top-level `model_type: sentencepiece`, no tokenizer.json."""
    meta.file("tokenizer/tokenizer.json").unlink()
    config = json.loads(meta.tokenizer_config.read_text())
    config["model_type"] = "sentencepiece"
    meta.tokenizer_config.write_text(json.dumps(config))
    report = verify_model(layout, meta.name)
    check = next(c for c in report.checks if c.name == "tokenizer in transformers")
    assert not check.ok and "transformers cannot load the tokenizer" in check.detail
    assert check.files == ["models_v2/meta-llama-mtp/tokenizer"]


def test_a_changed_raw_file_fails(layout, meta):
    flip_byte(meta.raw_checkpoint_dir / "consolidated.pth", 100)
    assert _failed(verify_model(layout, meta.name)) == {"raw files"}


def test_removed_raw_files_are_not_a_failure(layout, meta):
    for path in meta.raw_checkpoint_dir.iterdir():
        path.unlink()
    assert verify_model(layout, meta.name).ok


def _rewrite_weights(paths, edit):
    """Replace the weights by an edited copy with consistent checksums, so only the semantic
    checks can catch the edit."""
    from safetensors.torch import load_file

    tensors = load_file(paths.weights)
    edit(tensors)
    written = save_tensors(paths.weights, tensors, {"format": "pt"})
    write_sha256sums(paths.sha256sums, {"model.safetensors": written.sha256})
    metadata = json.loads(paths.metadata.read_text())
    metadata["weights"].update(size=written.size, sha256=written.sha256)
    paths.metadata.write_text(json.dumps(metadata))


def test_nan_in_the_weights_fails(layout, meta):
    _rewrite_weights(meta, lambda t: t["norm.weight"].__setitem__(3, float("nan")))
    report = verify_model(layout, meta.name)
    assert _failed(report) == {"no NaN/Inf"}
    assert "norm.weight" in report.checks[-1].detail


def test_a_tensor_in_another_dtype_fails(layout, meta):
    _rewrite_weights(meta, lambda t: t.update({"norm.weight": t["norm.weight"].float()}))
    assert _failed(verify_model(layout, meta.name)) == {"tensor dtypes"}


def test_a_missing_tensor_fails(layout, meta):
    _rewrite_weights(meta, lambda t: t.pop("extra_heads.0.ffn_norm.weight"))
    report = verify_model(layout, meta.name)
    assert _failed(report) == {"tensor names and shapes"}


def _edit_config(paths, path, edit, loader=json.loads, dumper=json.dumps):
    """Edit a config file and re-record its hash, so only the cross-checks see the edit."""
    path.write_text(dumper(edit(loader(path.read_text()))))
    metadata = json.loads(paths.metadata.read_text())
    metadata["files"][path.relative_to(paths.root).as_posix()] = sha256_file(path)
    paths.metadata.write_text(json.dumps(metadata))


def test_adapter_yaml_disagreeing_with_params_fails(layout, meta):
    _edit_config(
        meta,
        meta.adapter_config,
        lambda a: {**a, "intermediate_size": 11008},
        yaml.safe_load,
        yaml.safe_dump,
    )
    report = verify_model(layout, meta.name)
    assert _failed(report) == {"configs agree"}
    assert "intermediate_size" in next(c for c in report.checks if not c.ok).detail


def test_metadata_dtype_disagreeing_with_the_configs_fails(layout, meta):
    metadata = json.loads(meta.metadata.read_text())
    metadata["dtype"] = "bfloat16"
    meta.metadata.write_text(json.dumps(metadata))
    assert {"configs agree", "tensor dtypes"} <= _failed(verify_model(layout, meta.name))


def test_a_changed_rope_theta_fails(layout, meta):
    _edit_config(meta, meta.params, lambda p: {**p, "rope_theta": 500000.0})
    _edit_config(
        meta,
        meta.adapter_config,
        lambda a: {**a, "rope_theta": 500000.0},
        yaml.safe_load,
        yaml.safe_dump,
    )
    assert _failed(verify_model(layout, meta.name)) == {"rope_theta"}


def test_hf_config_disagreeing_with_the_weights_fails(layout, reference):
    _edit_config(reference, reference.hf_config, lambda c: {**c, "num_hidden_layers": 3})
    assert "tensor names and shapes" in _failed(verify_model(layout, reference.name))


def test_a_recorded_tokenizer_difference_fails(layout, meta_raw, reference_raw, tmp_path):
    from tests.helpers import edited_tokenizer

    edited = edited_tokenizer(meta_raw.tokenizer_model, tmp_path / "t.model", 4000, "▁qqqq")
    meta_raw.tokenizer_model.write_bytes(edited.read_bytes())
    convert_model(layout, "ref-sheared-llama-2.7b")
    report = verify_model(layout, reference_raw.name)
    assert _failed(report) == {"tokenizer shared"}


def test_a_shared_tokenizer_that_later_differs_fails(layout, reference, meta_raw, tmp_path):
    from tests.helpers import edited_tokenizer

    edited = edited_tokenizer(meta_raw.tokenizer_model, tmp_path / "t.model", 4000, "▁qqqq")
    meta_raw.tokenizer_model.write_bytes(edited.read_bytes())
    assert _failed(verify_model(layout, reference.name)) == {"tokenizer shared"}


def test_a_folder_without_metadata_fails_with_one_check(layout):
    report = verify_model(layout, "meta-llama-mtp")
    assert not report.ok and [c.name for c in report.checks] == ["metadata.json"]


def test_a_checklist_run_reads_each_model_file_once(layout, meta, monkeypatch):
    from collections import Counter

    import weighted_mtp.storage.hashing as hashing
    from weighted_mtp.pipeline.checklist import run_checklist
    from weighted_mtp.pipeline.manifest import refresh_manifest
    from weighted_mtp.storage import freshness

    refresh_manifest(layout)
    reads, real = Counter(), hashing.sha256_file

    def counting(path, **kwargs):
        reads[str(path)] += 1
        return real(path, **kwargs)

    for module in (freshness, hashing):
        monkeypatch.setattr(module, "sha256_file", counting)
    checklist = run_checklist(layout, through="integrity", save=False)
    meta_step = next(step for step in checklist.steps if step.group == "Meta model")
    assert meta_step.ok, meta_step.reason
    assert reads[str(meta.weights)] == 1
    assert reads[str(meta.raw_checkpoint_dir / "consolidated.pth")] == 1
