from __future__ import annotations

import hashlib
import json

import pytest
from huggingface_hub import errors

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.upstream_download import download_model, recorded_hash

COMMIT = "c0ffee" * 6 + "abcd"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mirror_files_land_in_the_seeds_places(layout, catalog, meta_mirror):
    source = download_model(layout, catalog, "meta-llama-mtp", mirror=meta_mirror)
    paths = layout.model("meta-llama-mtp")
    assert (paths.raw_checkpoint_dir / "consolidated.pth").is_file()
    assert (paths.raw_checkpoint_dir / "params.json").is_file()
    assert paths.tokenizer_model.is_file()
    assert set(source["files"]) == {
        "raw/7B_1T_4/consolidated.pth",
        "raw/7B_1T_4/params.json",
        "tokenizer/tokenizer.model",
    }
    for rel, entry in source["files"].items():
        assert entry["sha256"] == _sha(paths.file(rel)) == _sha(meta_mirror / entry["repo_path"])
    assert json.loads(paths.source.read_text()) == source
    assert source["repo"] == "facebook/multi-token-prediction"


def test_reference_mirror_keeps_the_repo_structure(layout, catalog, reference_mirror):
    download_model(layout, catalog, "ref-sheared-llama-2.7b", mirror=reference_mirror)
    paths = layout.model("ref-sheared-llama-2.7b")
    assert (paths.raw_checkpoint_dir / "pytorch_model.bin.index.json").is_file()
    assert (paths.raw_checkpoint_dir / "config.json").is_file()
    assert paths.tokenizer_model.is_file()


def test_a_mirror_missing_a_file_is_refused(layout, catalog, meta_mirror):
    (meta_mirror / "7B_1T_4" / "params.json").unlink()
    with pytest.raises(WmtpError, match=r"no file matching '7B_1T_4/params.json'"):
        download_model(layout, catalog, "meta-llama-mtp", mirror=meta_mirror)


def test_micro_models_are_not_downloaded(layout, catalog, tmp_path):
    with pytest.raises(WmtpError, match=r"built from meta-llama-mtp"):
        download_model(layout, catalog, "micro-mtp", mirror=tmp_path)


def test_recorded_hash_is_reused_only_for_unchanged_files(meta_raw):
    pth = meta_raw.raw_checkpoint_dir / "consolidated.pth"
    assert recorded_hash(meta_raw, pth) == _sha(pth)
    pth.write_bytes(pth.read_bytes() + b"x")
    assert recorded_hash(meta_raw, pth) is None


def _http_error(cls, status, message="boom"):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))
    return cls(message, response=response)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            lambda: _http_error(errors.GatedRepoError, 403),
            "is gated.*accept the license at https://huggingface.co/facebook/multi-token-prediction"
            ".*HF_TOKEN.*hf auth login",
        ),
        (lambda: _http_error(errors.RepositoryNotFoundError, 401), "not found or needs auth"),
        (lambda: _http_error(errors.RevisionNotFoundError, 404), "revision 'main' does not"),
        (lambda: _http_error(errors.HfHubHTTPError, 403), r"refused access.*\(HTTP 403\)"),
        (lambda: _http_error(errors.HfHubHTTPError, 503), r"failed \(HTTP 503\); rerun"),
        (lambda: errors.OfflineModeIsEnabled("offline"), "offline.*--mirror"),
        (lambda: __import__("httpx2").ConnectError("no route"), "network error.*resumes"),
    ],
)
def test_hub_failures_become_one_clear_line(layout, catalog, monkeypatch, exc, message):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise exc()

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", fail)
    with pytest.raises(WmtpError, match=message) as raised:
        download_model(layout, catalog, "meta-llama-mtp")
    assert "\n" not in raised.value.line()


def test_the_token_never_appears_in_errors(layout, catalog, monkeypatch):
    import huggingface_hub

    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)

    def fail(*args, **kwargs):
        raise _http_error(errors.HfHubHTTPError, 401, f"401 Unauthorized (token {secret})")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", fail)
    with pytest.raises(WmtpError) as raised:
        download_model(layout, catalog, "meta-llama-mtp")
    assert secret not in raised.value.line()


def test_offline_mode_is_reported_without_touching_the_network(layout, catalog):
    # tests/conftest.py sets HF_HUB_OFFLINE=1: the real client refuses before any request.
    with pytest.raises(WmtpError, match=r"offline"):
        download_model(layout, catalog, "meta-llama-mtp")
