"""The streaming writer against the official safetensors library."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.safetensors_stream import (
    SafetensorsWriter,
    TensorSpec,
    build_header,
    save_tensors,
    write_safetensors,
)


def _sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(7, 5, generator=g).to(torch.bfloat16),
        "a.weight": torch.randn(3, 4, 2, generator=g).to(torch.float16),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "ids": torch.arange(11, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4, dtype=torch.float16),
    }


def test_official_library_reads_back_identical_tensors_and_metadata(tmp_path):
    tensors = _sample_tensors()
    out = tmp_path / "model.safetensors"
    written = save_tensors(out, tensors, {"format": "pt", "dtype": "mixed"})
    loaded = load_file(out)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name
    with safe_open(out, framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "dtype": "mixed"}
    assert written.size == out.stat().st_size
    assert written.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()


def test_header_is_aligned_like_the_official_writer(tmp_path):
    tensors = _sample_tensors()
    header = build_header([TensorSpec.of(n, t.dtype, t.shape) for n, t in tensors.items()])
    assert len(header) % 8 == 0
    official = tmp_path / "official.safetensors"
    save_file(tensors, official)
    assert int.from_bytes(official.read_bytes()[:8], "little") % 8 == 0


def test_chunked_writes_equal_whole_tensor_writes(tmp_path):
    big = torch.randn(64, 32).to(torch.float16)
    specs = [TensorSpec.of("w", big.dtype, big.shape)]
    chunks = [("w", chunk) for chunk in big.reshape(-1).split(300)]
    chunked = write_safetensors(tmp_path / "a.safetensors", specs, chunks)
    whole = write_safetensors(tmp_path / "b.safetensors", specs, [("w", big)])
    assert chunked.sha256 == whole.sha256
    assert torch.equal(load_file(tmp_path / "a.safetensors")["w"], big)


@pytest.mark.parametrize(
    ("writes", "message"),
    [
        ([("w", torch.zeros(4, dtype=torch.float16))], "not fully written"),
        ([("v", torch.zeros(2, dtype=torch.float16))], "out of order"),
        ([("w", torch.zeros(8, dtype=torch.float32))], "header says F16"),
        ([("w", torch.zeros(9, dtype=torch.float16))], "more data"),
    ],
)
def test_bad_writes_leave_no_file(tmp_path, writes, message):
    out = tmp_path / "bad.safetensors"
    specs = [TensorSpec.of("w", torch.float16, (2, 4)), TensorSpec.of("v", torch.float16, (2,))]
    with pytest.raises(WmtpError, match=message):
        write_safetensors(out, specs, writes)
    assert list(tmp_path.iterdir()) == []


def test_an_exception_inside_the_writer_leaves_no_file(tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError), SafetensorsWriter(out, [TensorSpec.of("w", "F32", (2,))]):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_not_enough_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=1000))
    with pytest.raises(WmtpError, match="not enough free disk"):
        save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(4)})
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_and_bad_metadata_are_refused():
    spec = TensorSpec.of("w", "F32", (1,))
    with pytest.raises(WmtpError, match="twice"):
        build_header([spec, spec])
    with pytest.raises(WmtpError, match="strings"):
        build_header([spec], {"n": 1})


def test_a_failed_write_on_the_writer_thread_surfaces_and_leaves_no_file(tmp_path, monkeypatch):
    import errno
    from contextlib import contextmanager

    from weighted_mtp.models import safetensors_stream

    real_atomic_write = safetensors_stream.atomic_write

    class DiskFull:
        def __init__(self, handle):
            self.handle, self.calls = handle, 0

        def write(self, data):
            self.calls += 1
            if self.calls > 1:  # the header goes through; the first tensor fails
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

    @contextmanager
    def failing_atomic_write(path, mode):
        with real_atomic_write(path, mode) as handle:
            yield DiskFull(handle)

    monkeypatch.setattr(safetensors_stream, "atomic_write", failing_atomic_write)
    tensors = {f"t{i}": torch.zeros(1000) for i in range(20)}
    with pytest.raises(OSError, match="No space left"):
        save_tensors(tmp_path / "x.safetensors", tensors)
    assert list(tmp_path.iterdir()) == []
