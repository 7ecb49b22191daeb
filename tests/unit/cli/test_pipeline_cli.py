"""The top-level commands parse, print the per-step summary, and pass errors on."""

from typer.testing import CliRunner

from weighted_mtp.cli import app
from weighted_mtp.errors import UsageError


def test_build_prints_each_step_and_a_summary(tmp_path):
    root = tmp_path / "storage"
    result = CliRunner().invoke(app, ["--root", str(root), "build", "--only", "init"])
    assert result.exit_code == 0, result.output
    assert "→ init" in result.output and "✔ ran init" in result.output
    assert "build summary" in result.output
    assert "MANIFEST.json updated" in result.output
    assert (root / "MANIFEST.json").is_file()
    again = CliRunner().invoke(app, ["--root", str(root), "build", "--only", "init"])
    assert "· skipped init" in again.output and "MANIFEST.json unchanged" in again.output


def test_only_and_from_together_are_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["--root", str(tmp_path), "build", "--only", "init", "--from", "init"]
    )
    assert isinstance(result.exception, UsageError)


def test_verify_on_a_bare_layout_fails_with_the_checklist(tmp_path):
    root = str(tmp_path / "storage")
    CliRunner().invoke(app, ["--root", root, "build", "--only", "init"])
    result = CliRunner().invoke(app, ["--root", root, "verify"])
    assert result.exit_code == 1
    assert "✔ Step 1:" in result.output and "✘ Step 2:" in result.output
    assert "Step 11" in result.output
