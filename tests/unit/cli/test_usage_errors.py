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


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--device-memory", "nan", "--device-memory must be a positive number of GiB, not nan"),
        ("--device-memory", "inf", "--device-memory must be a positive number of GiB, not inf"),
        ("--device-memory", "-1", "--device-memory must be a positive number of GiB, not -1"),
        ("--device-memory", "0", "--device-memory must be a positive number of GiB, not 0"),
        ("--device-memory", "1e308", "--device-memory 1e+308 GiB is more than any device"),
        ("--ranks", "0", "--ranks must be between 1 and 1024, not 0"),
        ("--ranks", "-3", "--ranks must be between 1 and 1024, not -3"),
        ("--ranks", "1000000", "--ranks must be between 1 and 1024, not 1000000"),
        ("--ranks", "64", "batch_size 32 is not a multiple of micro_batch_size 1 x 64 rank(s)"),
        ("--device", "tpu", "--device must be one of cuda, cpu, not 'tpu'"),
    ],
)
def test_the_plan_refuses_values_it_cannot_plan_before_tracing(tmp_path, option, value, message):
    """Each in one line, before the models are read (the root is empty) or a step traced."""
    from weighted_mtp.train import memory_plan

    assert memory_plan.MAX_RANKS == 1024  # the bound docs/memory-plan.md states
    error = cli_error("train", "plan", "baseline", option, value, root=tmp_path)
    assert error.exit_code == 1 and message in error.line() and "\n" not in error.line()
    assert list(tmp_path.iterdir()) == []  # nothing written
