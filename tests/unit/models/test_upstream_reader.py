from __future__ import annotations

import json
import os

import pytest
import torch

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.upstream_reader import load_torch_state, open_files, open_hf_checkpoint


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_chunks_reassemble_the_exact_tensor(tmp_path):
    tensors = {
        "w": torch.randn(37, 5).to(torch.bfloat16),
        "v": torch.randn(11),
        "s": torch.tensor(1.5),
    }
    path = _save(tensors, tmp_path / "c.pth")
    with open_files([path]) as source:
        assert source.shapes() == {"w": (37, 5), "v": (11,), "s": ()}
        for name, tensor in tensors.items():
            pieces = list(source.chunks(name, max_elements=20))
            assert torch.equal(torch.cat(pieces).reshape(tensor.shape), tensor)
        assert len(list(source.chunks("w", max_elements=20))) == 10  # 4 rows each


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = _save({"w": torch.zeros(2), "evil": _RunsCode()}, tmp_path / "consolidated.pth")
    with pytest.raises(WmtpError, match=r"would run code \(posix.system\).*consolidated.pth"):
        load_torch_state(path)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = _save({"w": torch.zeros(1000)}, tmp_path / "consolidated.pth")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WmtpError, match=r"truncated or corrupted.*consolidated.pth"):
        load_torch_state(path)


def test_a_legacy_non_zip_file_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(WmtpError, match=r"legacy.*cannot be memory-mapped"):
        load_torch_state(path)


def test_garbage_and_non_tensors_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(WmtpError, match=r"not a PyTorch checkpoint"):
        load_torch_state(garbage)
    nested = _save({"model": {"w": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(WmtpError, match=r"'model' is a dict, not a tensor"):
        load_torch_state(nested)


@pytest.mark.parametrize("shard_format", ["bin", "safetensors"])
def test_sharded_checkpoints_open_with_every_tensor(
    reference_mirror, shard_format, tmp_path, sp_model_path
):
    from tests.helpers import TINY_REFERENCE_CONFIG
    from weighted_mtp.synthetic.model_mirrors import write_reference_mirror

    out = write_reference_mirror(
        tmp_path / shard_format,
        tokenizer_model=sp_model_path,
        config=TINY_REFERENCE_CONFIG,
        n_shards=3,
        shard_format=shard_format,
    )
    folder = out
    index = json.loads(next(folder.glob("*.index.json")).read_text())
    with open_hf_checkpoint(folder) as source:
        assert set(source.shapes()) == set(index["weight_map"])
        assert len(source.files) == 3


def _edit_index(folder, edit):
    index_path = folder / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    edit(index["weight_map"])
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update({"model.norm.weight": "../outside.bin"}), "outside the checkpoint"),
        (lambda m: m.update({"model.norm.weight": "/etc/passwd"}), "outside the checkpoint"),
        (
            lambda m: m.pop("model.norm.weight"),
            "holds tensor model.norm.weight, which the index does not list",
        ),
        (
            lambda m: m.update({"model.extra": "pytorch_model-00001-of-00002.bin"}),
            "lists tensor model.extra",
        ),
        (
            lambda m: m.update({"model.norm.weight": "pytorch_model-00001-of-00002.bin"}),
            "index puts tensor model.norm.weight in pytorch_model-00001",
        ),
        (
            lambda m: m.update({"model.norm.weight": "pytorch_model-00009-of-00009.bin"}),
            "shard pytorch_model-00009-of-00009.bin named by the index is missing",
        ),
    ],
)
def test_a_bad_index_is_refused(reference_mirror, edit, message):
    folder = reference_mirror
    _edit_index(folder, edit)
    with pytest.raises(WmtpError, match=message):
        open_hf_checkpoint(folder)


def test_a_missing_shard_is_refused(reference_mirror):
    folder = reference_mirror
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(WmtpError, match=r"00002-of-00002.bin named by the index is missing"):
        open_hf_checkpoint(folder)


def test_a_shard_linking_outside_is_refused(reference_mirror, tmp_path):
    folder = reference_mirror
    shard = folder / "pytorch_model-00002-of-00002.bin"
    outside = tmp_path / "elsewhere.bin"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(WmtpError, match=r"links outside"):
        open_hf_checkpoint(folder)


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    first = _save({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "one.bin")
    second = _save({"b": torch.zeros(1)}, tmp_path / "two.bin")
    with pytest.raises(WmtpError, match=r"tensor b is in two files \(one.bin and two.bin\)"):
        open_files([first, second])
