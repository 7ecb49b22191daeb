import subprocess
import sys


def test_help_lists_command_groups_without_importing_torch_or_other_slow_modules():
    """What `wmtp --help` needs is typer; torch (~5 s), transformers, rich (~0.25 s),
    jsonschema and importlib.metadata are imported by the commands that use them."""
    slow = ("torch", "transformers", "rich", "jsonschema", "yaml", "importlib.metadata")
    code = (
        "import sys\n"
        "from weighted_mtp.cli import main\n"
        "sys.argv = ['wmtp', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        f"print('LOADED', sorted(m for m in {slow!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "storage" in out.stdout
    assert "LOADED []" in out.stdout


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.startswith("wmtp ")


def test_usage_errors_exit_2_without_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "storage", "nope"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "No such command" in out.stderr and "Traceback" not in out.stderr


def _main_after(patch: str, *argv: str) -> subprocess.CompletedProcess:
    """`wmtp ARGV` in a fresh interpreter, after the Python code `patch` has replaced a part."""
    code = (
        f"import sys\n{patch}\nsys.argv = ['wmtp', *{list(argv)!r}]\n"
        "from weighted_mtp.cli import main\nmain()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_ctrl_c_exits_130_with_one_resume_hint(tmp_path):
    out = _main_after(
        "import weighted_mtp.pipeline.build as build\n"
        "def interrupted(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "build.build = interrupted",
        "--root",
        str(tmp_path),
        "build",
    )
    assert out.returncode == 130
    assert out.stderr.count("interrupted") == 1 and "to resume" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_full_disk_is_one_line_not_a_traceback(tmp_path):
    out = _main_after(
        "import errno\n"
        "import weighted_mtp.storage.init as init\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', '/data/storage/x')\n"
        "init.init_storage = full",
        "--root",
        str(tmp_path),
        "storage",
        "init",
    )
    assert out.returncode == 1
    assert "No space left on device [/data/storage/x]" in out.stderr
    assert "Traceback" not in out.stderr
