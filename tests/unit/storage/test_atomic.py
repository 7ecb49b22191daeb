import json
import time
from pathlib import Path

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import (
    atomic_write,
    ensure_free_space,
    read_json,
    write_json,
    write_text,
)


def test_write_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("new but incomplete")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target], "temporary file left behind"


def test_json_round_trip_and_errors(tmp_path: Path):
    path = tmp_path / "m.json"
    write_json(path, {"k": "한국어"})
    assert read_json(path) == {"k": "한국어"}
    assert path.read_text(encoding="utf-8").endswith("\n")
    path.write_text('{"k": ', encoding="utf-8")
    with pytest.raises(WmtpError, match=r"not valid JSON \(line 1"):
        read_json(path, "metadata")
    with pytest.raises(WmtpError, match="not found"):
        read_json(tmp_path / "missing.json")
    json.loads(json.dumps({}))


def test_free_space_check_refuses_impossible_sizes(tmp_path: Path):
    ensure_free_space(tmp_path, 1024, "a small file")
    with pytest.raises(WmtpError, match="not enough free disk"):
        ensure_free_space(tmp_path / "not" / "yet", 1 << 60, "an exabyte")


def test_atomic_write_rejects_append_mode(tmp_path: Path):
    with pytest.raises(ValueError), atomic_write(tmp_path / "x", "ab"):
        pass
    time.sleep(0)


def test_read_json_or_none_treats_absent_and_damaged_files_alike(tmp_path: Path):
    from weighted_mtp.storage.atomic import read_json_or_none

    path = tmp_path / "cache.json"
    assert read_json_or_none(path) is None
    assert read_json_or_none(None) is None
    path.write_text("{broken", encoding="utf-8")
    assert read_json_or_none(path) is None
    write_json(path, {"a": 1})
    assert read_json_or_none(path) == {"a": 1}
