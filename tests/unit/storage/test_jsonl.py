"""The bounded line reader, gzip allowance and strict JSON of upstream and processed files."""

import gzip
import io
import itertools
import random
from pathlib import Path

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import Limits
from weighted_mtp.storage.jsonl import (
    iter_jsonl,
    iter_jsonl_range,
    iter_lines,
    line_chunks,
)


def _naive(data: bytes) -> list[tuple[int, bytes]]:
    return [(n, line) for n, line in enumerate(data.split(b"\n"), start=1) if line.strip()]


def _lines(data: bytes, max_line: int = 1 << 20, **kwargs) -> list[tuple[int, bytes]]:
    limits = Limits(max_line_bytes=max_line)
    return list(iter_lines(io.BytesIO(data), None, limits, **kwargs))


@pytest.mark.parametrize("seed", range(20))
def test_lines_and_numbers_match_a_naive_split(seed, monkeypatch):
    import weighted_mtp.storage.jsonl as jsonl

    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 7)  # lines and blank runs cross blocks
    rng = random.Random(seed)
    pieces = [b"\n", b"  \n", b"\r\n", b"\t", b'{"a": 1}', b"x" * 20, b" y ", b"\n\n\n"]
    data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
    assert _lines(data) == _naive(data)


def test_a_last_line_without_newline_is_read():
    assert _lines(b"\n\na\n\nb") == [(3, b"a"), (5, b"b")]


def test_a_byte_range_keeps_the_given_line_numbers():
    data = b"a\n\nb\nc\n"
    handle = io.BytesIO(data)
    handle.seek(3)
    assert list(iter_lines(handle, None, Limits(), first_line=3, size=2)) == [(3, b"b")]


@pytest.mark.parametrize(
    "data",
    [
        b"x" * 5000,  # no newline at all
        b'{"a": 1}\n' + b"y" * 5000 + b"\n{}\n",  # one long line among short ones
        b"\n" * 100 + b"z" * 4097,
    ],
)
def test_a_line_beyond_the_limit_is_refused_naming_line_and_variable(data, tmp_path):
    path = tmp_path / "raw.jsonl"
    with pytest.raises(WmtpError, match=r"line \d+ is longer than 4,096 bytes") as exc:
        list(iter_lines(io.BytesIO(data), path, Limits(max_line_bytes=4096)))
    assert "WMTP_MAX_LINE_BYTES" in exc.value.line() and str(path) in exc.value.line()


def test_iter_jsonl_takes_its_limit_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "mbpp.jsonl"
    path.write_bytes(b'{"text": "' + b"a" * 3000 + b'"}\n')
    assert len(list(iter_jsonl(path))) == 1
    monkeypatch.setenv("WMTP_MAX_LINE_BYTES", "1000")
    with pytest.raises(WmtpError, match="line 1 is longer than 1,000 bytes"):
        list(iter_jsonl(path))


@pytest.mark.parametrize(
    ("literal", "line"),
    [("NaN", 2), ("Infinity", 3), ("-Infinity", 2), ("1e999", 3)],
)
def test_non_standard_json_is_refused_naming_file_and_line(tmp_path, literal, line):
    path = tmp_path / "train.jsonl"
    rows = ['{"name": "a"}', f'{{"difficulty": {literal}}}', '{"name": "b"}']
    rows.insert(line - 1, rows.pop(1))
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(WmtpError, match=f"line {line} is not standard JSON") as exc:
        list(iter_jsonl(path))
    assert "train.jsonl" in exc.value.line()


def _gzip(path, data: bytes):
    path.write_bytes(gzip.compress(data, compresslevel=9))
    return path


def test_a_gzip_bomb_is_stopped_by_the_ratio(tmp_path, monkeypatch):
    path = _gzip(tmp_path / "HumanEval.jsonl.gz", b"\n" * (8 << 20))
    monkeypatch.setenv("WMTP_MIN_GZIP_ALLOWANCE", str(1 << 20))
    with pytest.raises(WmtpError, match="gzip file expands beyond") as exc:
        list(iter_jsonl(path))
    assert "WMTP_MAX_GZIP_RATIO" in exc.value.line()


def test_the_absolute_decompressed_limit_applies_whatever_the_ratio(tmp_path, monkeypatch):
    rng = random.Random(0)
    data = b"".join(b'{"v": "%d"}\n' % rng.getrandbits(64) for _ in range(40_000))
    path = _gzip(tmp_path / "mbpp.jsonl.gz", data)
    monkeypatch.setenv("WMTP_MAX_DECOMPRESSED_BYTES", str(100_000))
    monkeypatch.setenv("WMTP_MIN_GZIP_ALLOWANCE", "1")
    with pytest.raises(WmtpError, match="max decompressed bytes 100,000") as exc:
        list(iter_jsonl(path))
    assert "WMTP_MAX_DECOMPRESSED_BYTES" in exc.value.line()


def test_a_normal_gzip_file_reads_whole(tmp_path):
    rows = b"".join(b'{"task_id": %d}\n' % i for i in range(1000))
    path = _gzip(tmp_path / "HumanEval.jsonl.gz", rows + b"\n\n")
    assert [row["task_id"] for _n, row in iter_jsonl(path)] == list(range(1000))


def test_blank_lines_only_is_an_empty_file(tmp_path):
    path = _gzip(tmp_path / "HumanEval.jsonl.gz", b" \n" * 100_000)
    with pytest.raises(WmtpError, match="file is empty"):
        list(iter_jsonl(path))


def test_worker_ranges_and_chunks_refuse_long_lines(tmp_path, monkeypatch):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"{}\n" * 10 + b'{"a": "' + b"b" * 5000 + b'"}\n' + b"{}\n")
    monkeypatch.setenv("WMTP_MAX_LINE_BYTES", "4096")
    with pytest.raises(WmtpError, match="line 11 is longer than 4,096 bytes"):
        list(iter_jsonl_range(path, 0, path.stat().st_size, 1))
    with pytest.raises(WmtpError, match=r"line 1\d is longer than 4,096 bytes"):
        line_chunks(path, 40)


def test_jsonl_and_gzip_lines(tmp_path: Path):
    plain = tmp_path / "a.jsonl"
    plain.write_text('{"x": 1}\n\n{"x": 2}\n')
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    expected = [(1, {"x": 1}), (3, {"x": 2})]
    assert list(iter_jsonl(plain)) == expected
    assert list(iter_jsonl(packed)) == expected


def test_corrupt_gzip_is_one_clear_error(tmp_path: Path):
    packed = bytearray(gzip.compress(b'{"x": 1}\n' * 10_000))
    for i in range(30, 60):  # damage the deflate stream, not the gzip header
        packed[i] ^= 0xFF
    bad = tmp_path / "a.jsonl.gz"
    bad.write_bytes(bytes(packed))
    with pytest.raises(WmtpError, match="corrupt gzip file") as exc:
        list(iter_jsonl(bad))
    assert str(bad) in exc.value.line()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"x": 1}\n{"x": \n', "line 2 is not valid JSON"),
        (b'{"x": 1}\n{"x": "\xff"}\n', "line 2 is not UTF-8"),
        (b"[1, 2]\n", "line 1 is a JSON list"),
        (b"", "file is empty"),
        (b"\n \n", "file is empty"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "raw.jsonl"
    path.write_bytes(content)
    with pytest.raises(WmtpError, match=message) as exc:
        list(iter_jsonl(path))
    assert str(path) in exc.value.line()


@pytest.mark.parametrize("target", [1, 7, 50, 10_000])
def test_chunks_cover_every_line_once_with_right_numbers(tmp_path: Path, target: int):
    path = tmp_path / "split.jsonl"
    path.write_text(
        "".join(
            f'{{"i": {i}, "pad": "{"x" * (i % 13)}"}}\n' if i % 5 else "\n" for i in range(1, 60)
        )
    )
    chunks = line_chunks(path, target)
    assert chunks[0][0] == 0 and chunks[-1][1] == path.stat().st_size
    assert len(chunks) > 1 if target < 100 else len(chunks) == 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    pieces = [
        row for start, end, first in chunks for row in iter_jsonl_range(path, start, end, first)
    ]
    assert pieces == list(iter_jsonl(path))
