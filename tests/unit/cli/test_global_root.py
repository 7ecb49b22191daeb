"""Which storage root a command with its own `--root` (the demo) uses."""

from pathlib import Path

import pytest

from tests.helpers import cli_error
from weighted_mtp.cli._console import State
from weighted_mtp.errors import UsageError

DEFAULT = Path("demo-storage")


def test_the_command_root_wins_then_the_global_one_then_the_default(tmp_path):
    given = State(tmp_path / "global", root_given=True)
    assert given.own_root(None, DEFAULT) == tmp_path / "global"
    assert given.own_root(tmp_path / "global" / ".", DEFAULT) == tmp_path / "global" / "."
    defaulted = State(Path("storage"))  # no --root: WMTP_ROOT or the default
    assert defaulted.own_root(None, DEFAULT) == DEFAULT
    assert defaulted.own_root(tmp_path / "mine", DEFAULT) == tmp_path / "mine"
    with pytest.raises(UsageError, match="--root given twice"):
        given.own_root(tmp_path / "other", DEFAULT)


def test_two_different_roots_for_the_demo_are_refused_before_anything_is_written(tmp_path):
    error = cli_error("demo", "--root", str(tmp_path / "b"), root=tmp_path / "a")
    assert "--root given twice" in error.what and error.exit_code == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
