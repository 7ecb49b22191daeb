"""User and usage errors of each command, in process (typer's CliRunner): the right
`WmtpError`, exit code and message. How `wmtp` prints them (one line on stderr, no
traceback) is checked once per kind in real processes, in tests/integration."""

import pytest

from tests.helpers import cli_error, invoke


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("data", "prepare", "nope"), 2, "unknown dataset 'nope'"),
        (("data", "prepare", "mbpp"), 1, "or pass --tokenizer PATH"),
        (("data", "stats", "mbpp"), 1, "run `wmtp data prepare mbpp` first"),
        (("models", "convert", "nope"), 2, "unknown model 'nope'"),
        (("models", "download", "micro-mtp"), 2, "unknown model 'micro-mtp'"),
        (("models", "convert", "meta-llama-mtp", "--dtype", "int4"), 2, "unknown dtype"),
        (("models", "convert", "meta-llama-mtp"), 1, "wmtp models download"),
        (("models", "micro", "micro-mtp", "--init", "zeros"), 2, "unknown init 'zeros'"),
        (("storage", "status"), 1, "storage init"),
    ],
)
def test_user_errors_name_what_to_do(tmp_path, args, code, message):
    if args[0] == "models" and args[1] == "micro":
        invoke("storage", "init", root=tmp_path / "storage")
    error = cli_error(*args, root=tmp_path / "storage")
    assert error.exit_code == code
    assert message in error.line()
    assert "\n" not in error.line()


def test_unknown_commands_and_options_exit_2(tmp_path):
    unknown = invoke("storage", "nope", root=tmp_path)
    assert unknown.exit_code == 2 and "No such command" in unknown.output
    option = invoke("storage", "status", "--bogus", root=tmp_path)
    assert option.exit_code == 2 and "No such option" in option.output


def test_help_lists_the_command_groups(tmp_path):
    result = invoke("--help", root=tmp_path)
    assert result.exit_code == 0
    for group in ("storage", "data", "models", "build", "verify", "demo"):
        assert group in result.output
