import math

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import NonStandardJson, dumps_json, loads_strict, read_json


@pytest.mark.parametrize(
    "text",
    [
        '{"rope_theta": NaN}',
        '{"a": [1, Infinity]}',
        '{"a": {"b": -Infinity}}',
        '{"difficulty": 1e999}',
        '{"x": -1e400}',
    ],
)
def test_non_standard_numbers_are_refused(text, tmp_path):
    with pytest.raises(NonStandardJson):
        loads_strict(text)
    path = tmp_path / "params.json"
    path.write_text(text)
    with pytest.raises(WmtpError, match=r"params.json is not standard JSON") as exc:
        read_json(path, "params.json")
    assert str(path) in exc.value.line()


def test_an_integer_of_thousands_of_digits_is_one_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"n": ' + "9" * 5000 + "}")
    with pytest.raises(WmtpError, match="not standard JSON"):
        read_json(path, "config.json")


def test_standard_json_still_parses():
    assert loads_strict('{"a": 1.5e300, "b": -0.0, "c": [1, "NaN"]}') == {
        "a": 1.5e300,
        "b": -0.0,
        "c": [1, "NaN"],
    }


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_the_storage_never_writes_them(value):
    with pytest.raises(ValueError):
        dumps_json({"x": value})


def test_a_folder_is_one_error(tmp_path):
    with pytest.raises(WmtpError, match=r"SOURCE\.json is a folder"):
        read_json(tmp_path, "SOURCE.json")


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "params.json")
    with pytest.raises(WmtpError, match=r"params\.json is a FIFO"):
        read_json(tmp_path / "params.json", "params.json")


def test_a_file_beyond_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text('{"pad": "' + "x" * 5000 + '"}')
    assert len(read_json(path)["pad"]) == 5000
    monkeypatch.setenv("WMTP_MAX_LINE_BYTES", "4096")
    with pytest.raises(WmtpError, match=r"config\.json is larger than 4,096 bytes"):
        read_json(path, "config.json")
