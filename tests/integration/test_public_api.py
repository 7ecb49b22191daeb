"""`weighted_mtp.models` exports the adapter's public API without importing torch early."""

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_importing_the_packages_does_not_import_torch():
    out = _run(
        "import sys\n"
        "import weighted_mtp, weighted_mtp.models\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    assert out.split() == ["False", "False"]


def test_the_public_api_resolves_to_the_adapter():
    import weighted_mtp.models as models
    from weighted_mtp.models import adapter, load_mtp_model, load_reference_model, mtp_loss

    assert load_mtp_model is adapter.load_mtp_model
    assert load_reference_model is adapter.load_reference_model
    assert mtp_loss is adapter.mtp_loss
    assert {"load_mtp_model", "load_reference_model", "mtp_loss"} <= set(dir(models))
    with pytest.raises(ImportError, match="load_everything"):
        exec("from weighted_mtp.models import load_everything")
