import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import ENV_VARS, Limits, current_limits, raise_hint


def test_defaults_hold_without_the_variables(monkeypatch):
    for variable in ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    assert current_limits() == Limits()


@pytest.mark.parametrize(("raw", "value"), [("4096", 4096), ("64_000", 64000), (" 7 ", 7)])
def test_a_variable_sets_its_limit(monkeypatch, raw, value):
    monkeypatch.setenv("WMTP_MAX_LINE_BYTES", raw)
    assert current_limits().max_line_bytes == value
    assert current_limits().max_text_chars == Limits().max_text_chars


@pytest.mark.parametrize("raw", ["0", "-5", "lots", "1.5"])
def test_a_bad_value_is_one_error_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("WMTP_MAX_GZIP_RATIO", raw)
    with pytest.raises(WmtpError, match=r"WMTP_MAX_GZIP_RATIO=.* is not a positive integer"):
        current_limits()


def test_the_hint_names_the_variable_and_the_value():
    assert raise_hint("max_text_chars", 10) == (
        "if the input is genuine, set WMTP_MAX_TEXT_CHARS above 10"
    )
