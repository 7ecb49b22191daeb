"""The model commands as a user runs them: real process, real exit codes, one-line errors."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import run_wmtp

TINY = {
    "dim": 64,
    "n_layers": 3,
    "n_heads": 2,
    "multiple_of": 32,
    "n_future_tokens": 2,
    "vocab_size": 8320,
}


wmtp = run_wmtp


@pytest.fixture
def meta_mirror(tmp_path: Path, sp_model_path: Path) -> Path:
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    return write_meta_mirror(tmp_path / "mirror", tokenizer_model=sp_model_path, params=TINY)


def test_download_convert_verify(tmp_path, meta_mirror):
    root = tmp_path / "storage"
    assert wmtp("storage", "init", root=root).returncode == 0
    down = wmtp(
        "models", "download", "meta-llama-mtp", "--mirror", str(meta_mirror), "--json", root=root
    )
    assert down.returncode == 0, down.stderr
    assert "raw/7B_1T_4/consolidated.pth" in json.loads(down.stdout)["files"]
    conv = wmtp("models", "convert", "meta-llama-mtp", "--dtype", "bfloat16", root=root)
    assert conv.returncode == 0, conv.stderr
    assert "bfloat16 → bfloat16" in conv.stdout
    check = wmtp("models", "verify", "meta-llama-mtp", "--json", root=root)
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["ok"] is True

    weights = root / "models_v2/meta-llama-mtp/safetensors/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    failed = wmtp("models", "verify", "meta-llama-mtp", root=root)
    assert failed.returncode == 1 and "✘ SHA256SUMS" in failed.stdout


def test_bad_input_is_one_line_and_nonzero(tmp_path, meta_mirror):
    root = tmp_path / "storage"
    wmtp("models", "download", "meta-llama-mtp", "--mirror", str(meta_mirror), root=root)
    pth = root / "models_v2/meta-llama-mtp/raw/7B_1T_4/consolidated.pth"
    state = torch.load(pth, weights_only=True)
    state["output.weight"][0, 0] = 1e6
    torch.save(state, pth)
    result = wmtp("models", "convert", "meta-llama-mtp", root=root)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "output.weight overflows float16" in result.stderr
    assert "--dtype bfloat16" in result.stderr
    assert not (root / "models_v2/meta-llama-mtp/safetensors/model.safetensors").exists()
