import hashlib
import io
import subprocess
from pathlib import Path

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.hashing import (
    CHUNK_SIZE,
    HashingWriter,
    check_sha256sums,
    read_sha256sums,
    sha256_file,
    write_sha256sums,
)


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path: Path):
    data = bytes(range(256)) * ((CHUNK_SIZE // 256) + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_hashing_writer_hashes_what_it_writes():
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    writer.write(b"abc")
    writer.write(memoryview(b"def"))
    assert sink.getvalue() == b"abcdef"
    assert writer.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert writer.bytes_written == 6


def test_sha256sums_is_accepted_by_coreutils(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    sums = tmp_path / "SHA256SUMS"
    write_sha256sums(sums, {"model.safetensors": sha256_file(tmp_path / "model.safetensors")})
    subprocess.run(
        ["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=tmp_path, check=True, capture_output=True
    )
    assert check_sha256sums(sums) == [("model.safetensors", True, "ok")]


def test_check_reports_changed_and_missing_files(tmp_path: Path):
    (tmp_path / "a").write_bytes(b"a")
    sums = tmp_path / "SHA256SUMS"
    write_sha256sums(sums, {"a": sha256_file(tmp_path / "a"), "b": "0" * 64})
    (tmp_path / "a").write_bytes(b"A")
    assert check_sha256sums(sums) == [("a", False, "changed"), ("b", False, "missing")]


def test_reads_coreutils_output_and_rejects_garbage(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"x")
    out = subprocess.run(
        ["sha256sum", "f"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    sums = tmp_path / "SUMS"
    sums.write_text(out)
    assert read_sha256sums(sums) == {"f": hashlib.sha256(b"x").hexdigest()}
    sums.write_text(out + "not a checksum line\n")
    with pytest.raises(WmtpError, match="line 2"):
        read_sha256sums(sums)
    sums.write_bytes(b"\xff\xfe binary garbage")
    with pytest.raises(WmtpError, match="not UTF-8"):
        read_sha256sums(sums)
