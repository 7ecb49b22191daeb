"""`wmtp train`'s options: declared once for every experiment command, and an option's bad
value reported under the option's name, before anything is trained."""

from __future__ import annotations

import pytest
import typer

from tests.helpers import cli_error
from weighted_mtp.cli.train import COMMANDS, POLICY, SHARED, app


def options(command: str) -> dict[str, str | None]:
    """The command's options and their help texts, as typer declared them to click."""
    found = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {
        opt: param.help
        for param in found.params
        if param.param_type_name == "option"
        for opt in param.opts
    }


def test_every_experiment_command_takes_the_shared_options_with_one_help_text():
    shared = {f.decls.split("/")[0]: f.help for f in SHARED}
    for command in COMMANDS:
        got = options(command.experiment)
        assert {opt: got.get(opt) for opt in shared} == shared, command.experiment
    policy = {f.decls: f.help for f in POLICY}
    for name in ("baseline", "verifiable", "rho1"):
        assert {opt: options(name).get(opt) for opt in policy} == policy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rho1", "--kappa", "1.5"), "--kappa must be in (0, 1], not 1.5"),
        (("rho1", "--kappa", "nan"), "--kappa must be a finite number, not nan"),
        (("rho1", "--set", "rho1.kappa=0"), "config key 'rho1.kappa' must be in (0, 1], not 0.0"),
        (("critic", "--objective", "ranking"), "--objective wants 'mc' | 'pairwise'"),
        (("baseline", "--set", "lr=inf"), "config key 'lr' must be a finite number, not 'inf'"),
        (("baseline", "--n-future", "-1"), "--n-future must be >= 0, not -1"),
        (("ref-tune", "--set", "lora.dropout=1"), "config key 'lora.dropout' must be in [0, 1)"),
    ],
)
def test_a_bad_value_names_the_option_as_written(tmp_path, args, message):
    error = cli_error("train", args[0], "--small", *args[1:], root=tmp_path / "storage")
    assert message in error.line() and "\n" not in error.line()
    assert not (tmp_path / "storage").exists()
