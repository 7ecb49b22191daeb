"""Every option of every `wmtp` command reaches wmtp untouched under torchrun.

`torchrun [its options] -m weighted_mtp ARGS` parses ARGS with torchrun's own argparse
parser before the script sees them, and argparse matches abbreviations even there: an
option that is a prefix of several of torchrun's (`--n`: `--nnodes`, `--nproc-per-node`,
...) stops torchrun with "ambiguous option". Each option is fed to the real parser
(`torch.distributed.run.get_args_parser`) after `-m weighted_mtp` and the command path.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from torch.distributed.run import get_args_parser

from weighted_mtp.cli import app

LAUNCH = ["--standalone", "--nproc-per-node", "2", "-m", "weighted_mtp"]
ROOT = typer.main.get_command(app)
TORCHRUN = get_args_parser()


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command and group of the app, the root's `()` first."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def command_at(path: tuple[str, ...]) -> Any:
    """The click command (typer's own copy of click) at `path`."""
    command = ROOT
    for name in path:
        command = command.commands[name]
    return command


def spellings(path: tuple[str, ...]) -> Iterator[list[str]]:
    """Each way an option of the command at `path` is written: `--opt VALUE`,
    `--opt=VALUE`, `-o VALUE`, a flag alone; and `--help`."""
    yield ["--help"]
    command = command_at(path)
    for param in command.get_params(typer.Context(command)):  # a train command's config too
        if param.param_type_name != "option":
            continue
        for name in [*param.opts, *param.secondary_opts]:
            if param.is_flag:
                yield [name]
            else:
                yield [name, "1"]
                if name.startswith("--"):
                    yield [f"{name}=1"]


def script_args(args: list[str]) -> list[str] | str:
    """What torchrun passes to the script for `args`, or its own error."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = TORCHRUN.parse_args([*LAUNCH, *args])
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    return [parsed.training_script, *parsed.training_script_args]


ALL_COMMANDS = list(commands(ROOT))


def test_the_walk_reaches_every_group_command_and_option() -> None:
    groups = {path[0] for path in ALL_COMMANDS if path}
    assert {"storage", "data", "models", "eval", "train"} <= groups
    assert ("eval", "run") in ALL_COMMANDS and ("train", "baseline") in ALL_COMMANDS
    assert len(ALL_COMMANDS) > 30
    options = [o[0] for path in ALL_COMMANDS for o in spellings(path)]
    assert {"--root", "--max-new-tokens", "--temperature", "--resume", "--set", "--kappa"} <= set(
        options
    )
    assert len(options) > 150


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "wmtp")
def test_every_option_passes_through_torchrun_untouched(path: tuple[str, ...]) -> None:
    for option in spellings(path):
        args = ["--root", "R", *path, *option]
        assert script_args(args) == ["weighted_mtp", *args], option


def test_the_check_catches_an_option_torchrun_claims() -> None:
    """The failure this guards against, on torchrun's parser as it is."""
    assert "ambiguous option: --n could match" in str(script_args(["eval", "run", "x", "--n", "1"]))
    renamed = ["eval", "run", "x", "-n", "1"]
    assert script_args(renamed) == ["weighted_mtp", *renamed]
