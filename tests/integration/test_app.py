import subprocess
import sys


def test_help_lists_command_groups_without_importing_torch():
    code = (
        "import sys\n"
        "from weighted_mtp.cli import app\n"
        "from typer.testing import CliRunner\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output)\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_FREE')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "storage" in out.stdout
    assert "TORCH_FREE" in out.stdout


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
