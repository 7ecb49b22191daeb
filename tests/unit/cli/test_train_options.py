"""`wmtp train`'s options: made from the config's fields (one declaration per key, with its
description and bounds), and an option's bad value reported under the option's name,
before anything is trained."""

from __future__ import annotations

import pytest
import typer

from tests.helpers import cli_error, invoke
from weighted_mtp.assets import TRAINING_RUNS
from weighted_mtp.cli.train import GIVEN, app
from weighted_mtp.train.config import POLICY_RUNS, bounds_text, fields, option_of


def options(command: str) -> dict[str, str | None]:
    """The command's options and their help texts, as typer declared them."""
    found = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    params = found.get_params(typer.Context(found))
    return {opt: p.help for p in params if p.param_type_name == "option" for opt in p.opts}


def test_every_config_option_is_made_from_its_field():
    """Each field with an `Option` is an option of exactly the commands it names (`plan`:
    all of them), its help the field's description, key and bounds."""
    made, offers = 0, {c: options(c) for c in (*TRAINING_RUNS, "suite", "plan")}
    for key, field in fields():
        option = option_of(field)
        if option is None:
            continue
        flag = option.decls.split("/")[0]
        for command, offered in offers.items():
            if command == "plan" or command in option.commands:
                assert key in offered[flag], command
                assert field.description.replace("`", "") in offered[flag]
                assert bounds_text(field) in offered[flag]
                made += 1
            else:
                assert flag not in offered, (command, flag)
    assert made > 40
    assert {"--kappa", "--lr", "--n-future", "--reference"} <= set(offers["rho1"])
    assert "--include-incorrect" in offers["verifiable"] and "--objective" in offers["critic"]
    for name in POLICY_RUNS:
        assert "--naive-heads" in offers[name]
    assert "--naive-heads" not in offers["critic"] and "--model" not in offers["suite"]


def test_help_shows_set_key_value(tmp_path):
    shown = invoke("train", "baseline", "--help", root=tmp_path)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "--set KEY=VALUE" in text and "--lr <float>" in text and "[lr: positive]" in text


@pytest.mark.parametrize(
    ("command", "args", "given"),
    [
        ("baseline", [], []),
        (
            "baseline",
            ["--full", "--small", "--lr", "3e-4", "--n-future", "2"],
            [("lora.enabled", False, "--full"), ("small", True, "--small"),
             ("lr", 3e-4, "--lr"), ("n_future", 2, "--n-future")],
        ),
        (
            "verifiable",
            ["--include-incorrect", "--lora", "--critic", "runs/critic/x"],
            [("correct_only", False, "--include-incorrect"), ("lora.enabled", True, "--lora"),
             ("critic.run", "runs/critic/x", "--critic")],
        ),
    ],
)  # fmt: skip
def test_an_option_given_becomes_a_setting_naming_it(command, args, given):
    found = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    ctx = found.make_context(command, args)
    settings = ctx.meta.get(GIVEN, [])
    assert [(s.key, s.value, s.given_as) for s in settings] == given


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rho1", "--kappa", "1.5"), "--kappa must be in (0, 1], not 1.5"),
        (("rho1", "--kappa", "nan"), "--kappa must be a finite number, not nan"),
        (("rho1", "--set", "rho1.kappa=0"), "config key 'rho1.kappa' must be in (0, 1], not 0.0"),
        (("critic", "--objective", "ranking"), "--objective wants 'mc' | 'pairwise'"),
        (("baseline", "--set", "lr=inf"), "config key 'lr' must be a finite number, not 'inf'"),
        (("baseline", "--n-future", "0"), "--n-future must be positive, not 0"),
        (("baseline", "--lr", "-1"), "--lr must be positive, not -1.0"),
        (("ref-tune", "--set", "lora.dropout=1"), "config key 'lora.dropout' must be in [0, 1)"),
    ],
)
def test_a_bad_value_names_the_option_as_written(tmp_path, args, message):
    error = cli_error("train", args[0], "--small", *args[1:], root=tmp_path / "storage")
    assert message in error.line() and "\n" not in error.line()
    assert not (tmp_path / "storage").exists()
