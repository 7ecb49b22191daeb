"""The storage commands as a user runs them: real process, real exit codes."""

import json
from pathlib import Path

from tests.helpers import run_wmtp

wmtp = run_wmtp


def test_init_clean_status_round_trip(tmp_path: Path):
    root = tmp_path / "storage"
    assert wmtp("storage", "init", root=root).returncode == 0
    assert wmtp("storage", "init", root=root).returncode == 0
    weights = root / "models_v2/micro-mtp/safetensors/model.safetensors"
    weights.write_bytes(b"w" * 2048)
    ongoing = root / "models_v2/meta-llama-mtp/raw/7B_1T_4/consolidated.pth"
    ongoing.parent.mkdir(parents=True)
    ongoing.write_bytes(b"partial")

    dry = wmtp("storage", "clean", root=root)
    assert dry.returncode == 0 and "nothing deleted" in dry.stdout
    assert weights.exists()

    status = wmtp("storage", "status", "--json", root=root)
    assets = {(a["kind"], a["name"]): a["state"] for a in json.loads(status.stdout)["assets"]}
    assert assets[("model", "micro-mtp")] == "converted"
    assert assets[("model", "meta-llama-mtp")] == "raw-only"

    done = wmtp("storage", "clean", "--yes", root=root)
    assert done.returncode == 0, done.stderr
    assert not weights.exists() and ongoing.read_bytes() == b"partial"


def test_user_errors_are_one_line_without_traceback(tmp_path: Path):
    result = wmtp("storage", "clean", "--keep", str(tmp_path / "x"), root=tmp_path / "s")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "outside" in lines[0]

    missing = wmtp("storage", "status", root=tmp_path / "nowhere")
    assert missing.returncode == 1 and "storage init" in missing.stderr
