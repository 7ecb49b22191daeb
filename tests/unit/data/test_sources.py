import gzip
import itertools
from pathlib import Path

import pytest

from weighted_mtp.data.sources import field, iter_jsonl, iter_parquet_rows
from weighted_mtp.errors import WmtpError


def test_parquet_rows_stream_nested_structs(mirrors: Path):
    import pyarrow.parquet as pq

    path = mirrors / "codecontests/data/train-00000-of-00001.parquet"
    assert pq.ParquetFile(path).num_row_groups > 1
    rows = list(iter_parquet_rows(path))
    assert len(rows) == pq.ParquetFile(path).metadata.num_rows
    assert set(rows[0]["solutions"]) == {"language", "solution"}
    assert rows[0]["time_limit"] == {"seconds": 2, "nanos": 0}


def test_corrupt_parquet_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "train-0.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(WmtpError, match="cannot read Parquet") as exc:
        list(iter_parquet_rows(bad))
    assert str(bad) in exc.value.line()


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


def test_missing_field_names_line_and_field(tmp_path: Path):
    with pytest.raises(WmtpError, match="line 7: missing field 'code'"):
        field({"text": "t"}, "code", tmp_path / "mbpp.jsonl", 7)


@pytest.mark.parametrize("target", [1, 7, 50, 10_000])
def test_chunks_cover_every_line_once_with_right_numbers(tmp_path: Path, target: int):
    from weighted_mtp.data.sources import iter_jsonl_range, line_chunks

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
