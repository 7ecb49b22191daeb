"""The hub code path end to end: the real `huggingface_hub` client against a local fake hub
(tests/fakehub.py) that serves the synthetic upstream files, `wmtp` run as a user runs it
(a subprocess with HF_ENDPOINT set). Nothing here touches the real network."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import yaml
from fakehub import FakeHub, FakeRepo, hub_env

from weighted_mtp.storage.layout import Layout

pytestmark = pytest.mark.slow

META_REPO = "facebook/multi-token-prediction"
REF_REPO = "princeton-nlp/Sheared-LLaMA-2.7B"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _packaged_catalog() -> dict:
    return yaml.safe_load(resources.files("weighted_mtp").joinpath("catalog.yaml").read_text())


def _without_hashes(catalog: dict) -> dict:
    """The packaged catalog less its SHA-256s: the synthetic files cannot match the real
    ones. Repos, revisions and file lists stay as they are."""
    for group in ("models", "datasets"):
        for entry in catalog[group].values():
            for spec in entry.get("files", []):
                spec.pop("sha256", None)
    return catalog


def _commit(revision: str, repo: str) -> str:
    """The fake repo's commit: the catalog's pin, else one made up for this repo."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    return hashlib.sha1(repo.encode()).hexdigest()


def _repos(upstream: Path, catalog: dict, only: tuple[str, ...] = ()) -> list[FakeRepo]:
    repos = []
    for group in ("models", "datasets"):
        for name, entry in catalog[group].items():
            if "repo" not in entry or (only and name not in only):
                continue
            repos.append(
                FakeRepo(
                    entry["repo"],
                    entry["repo_type"],
                    upstream / name,
                    _commit(entry["revision"], entry["repo"]),
                    gated=entry.get("gated", False),
                )
            )
    return repos


def _as_parquet(jsonl: Path, out: Path) -> None:
    """The hub's Parquet conversion of a JSONL file (same columns, same rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from weighted_mtp.storage.jsonl import iter_jsonl

    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row for _line, row in iter_jsonl(jsonl)]), out)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """Every asset's synthetic upstream files, laid out as on the hub (written once): the
    demo's sources, with MBPP and HumanEval in the hub's Parquet form."""
    from weighted_mtp.pipeline.demo import write_demo_mirror

    mirror = write_demo_mirror(tmp_path_factory.mktemp("hub") / "upstream")
    if not (mirror / "mbpp" / "full").is_dir():
        _as_parquet(mirror / "mbpp" / "mbpp.jsonl", mirror / "mbpp" / "full" / "test.parquet")
        (mirror / "mbpp" / "mbpp.jsonl").unlink()
        _as_parquet(
            mirror / "humaneval" / "HumanEval.jsonl.gz",
            mirror / "humaneval" / "openai_humaneval" / "test-00000-of-00001.parquet",
        )
        (mirror / "humaneval" / "HumanEval.jsonl.gz").unlink()
    return mirror


@pytest.fixture
def catalog_file(tmp_path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(_without_hashes(_packaged_catalog())))
    return path


def _wmtp(root: Path, catalog: Path | None, *args: str, env: dict) -> list[str]:
    command = [sys.executable, "-m", "weighted_mtp", "--root", str(root)]
    command += ["--catalog", str(catalog)] if catalog else []
    return [*command, *args]


def _run(root, catalog, *args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _wmtp(root, catalog, *args, env=env),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_a_whole_build_through_the_hub_verifies_every_asset(upstream, catalog_file, tmp_path):
    from weighted_mtp.pipeline.plan import ASSET_GROUPS
    from weighted_mtp.pipeline.records import last_checklist

    root = tmp_path / "storage"
    catalog = yaml.safe_load(catalog_file.read_text())
    with FakeHub(_repos(upstream, catalog)) as hub:
        env = hub_env(hub, tmp_path / "hf-home")
        first = _run(root, catalog_file, "build", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        layout = Layout(root)
        checklist = last_checklist(layout)  # the build's own verify step, the asset groups
        assert checklist is not None
        assert all(step.ok for step in checklist.steps if step.group in ASSET_GROUPS)
        assert {step.group for step in checklist.steps} >= set(ASSET_GROUPS)

        source = json.loads(layout.model("ref-sheared-llama-2.7b").source.read_text())
        assert source["repo"] == REF_REPO and source["mirror"] is None
        assert source["commit"] == catalog["models"]["ref-sheared-llama-2.7b"]["revision"]
        for rel, entry in source["files"].items():
            assert entry["sha256"] == _sha(upstream / "ref-sheared-llama-2.7b" / entry["repo_path"])
            assert entry["sha256"] == _sha(layout.model("ref-sheared-llama-2.7b").file(rel))
        assert set(source["files"]) >= {
            "raw/reference_model/pytorch_model-00001-of-00002.bin",
            "raw/reference_model/config.json",
            "tokenizer/tokenizer.model",
            "tokenizer/tokenizer.json",
        }
        codecontests = json.loads(layout.dataset("codecontests").source.read_text())
        assert codecontests["revision"] == catalog["datasets"]["codecontests"]["revision"]

        fetched = len(hub.requests)
        second = _run(root, catalog_file, "build", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert len(hub.requests) == fetched  # finished downloads are kept, not fetched again
        assert f"kept files from {REF_REPO}@" in second.stdout


def _big_meta_upstream(folder: Path, size: int) -> Path:
    (folder / "7B_1T_4").mkdir(parents=True)
    (folder / "7B_1T_4" / "consolidated.pth").write_bytes(os.urandom(size))
    (folder / "7B_1T_4" / "params.json").write_text('{"dim": 64}')
    (folder / "tokenizer.model").write_bytes(os.urandom(4096))
    return folder


def test_a_killed_download_resumes_from_its_partial_file(catalog_file, tmp_path):
    # huggingface_hub reads in 10 MiB chunks: 24 MiB, held after 12 MiB, leaves 10 MiB on disk.
    upstream = _big_meta_upstream(tmp_path / "upstream", 24 << 20)
    repo = FakeRepo(META_REPO, "model", upstream, "a" * 40, gated=True)
    root = tmp_path / "storage"
    partials = root / "models_v2" / "meta-llama-mtp" / ".cache" / "downloads"
    with FakeHub([repo]) as hub:
        hub.stall_after["7B_1T_4/consolidated.pth"] = 12 << 20
        env = hub_env(hub, tmp_path / "hf-home")
        command = _wmtp(root, catalog_file, "models", "download", "meta-llama-mtp", env=env)
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline, partial = time.monotonic() + 600, None  # a loaded machine starts slowly
        while time.monotonic() < deadline and process.poll() is None:
            found = list(partials.rglob("consolidated.pth.*.part"))
            if found and found[0].stat().st_size >= 10 << 20:
                partial = found[0]
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert partial is not None, "the transfer never reached 10 MiB"
        kept = partial.stat().st_size
        hub.release()

        resumed = _run(root, catalog_file, "models", "download", "meta-llama-mtp", env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert hub.ranges("7B_1T_4/consolidated.pth") == [None, f"bytes={kept}-"]
    final = root / "models_v2" / "meta-llama-mtp" / "raw" / "7B_1T_4" / "consolidated.pth"
    assert _sha(final) == _sha(upstream / "7B_1T_4" / "consolidated.pth")
    assert not partial.exists()


@pytest.mark.parametrize("token", [None, "hf_wrong"])
def test_a_gated_repo_without_access_gives_one_line(catalog_file, tmp_path, token):
    upstream = _big_meta_upstream(tmp_path / "upstream", 1024)
    with FakeHub([FakeRepo(META_REPO, "model", upstream, "b" * 40, gated=True)]) as hub:
        env = hub_env(hub, tmp_path / "hf-home", token=token)
        result = _run(tmp_path / "s", catalog_file, "models", "download", "meta-llama-mtp", env=env)
    assert result.returncode == 1
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert f"{META_REPO} is gated" in lines[0]
    assert f"accept the license at https://huggingface.co/{META_REPO}" in lines[0]
    assert "HF_TOKEN" in lines[0] and "hf auth login" in lines[0]
    assert not (tmp_path / "s" / "models_v2" / "meta-llama-mtp" / "raw" / "7B_1T_4").exists()


def test_bytes_that_differ_from_the_lfs_hash_are_refused(upstream, catalog_file, tmp_path):
    catalog = yaml.safe_load(catalog_file.read_text())
    shard = "pytorch_model-00001-of-00002.bin"
    root = tmp_path / "storage"
    with FakeHub(_repos(upstream, catalog, only=("ref-sheared-llama-2.7b",))) as hub:
        hub.tamper.add(shard)
        env = hub_env(hub, tmp_path / "hf-home")
        result = _run(root, catalog_file, "models", "download", "ref-sheared-llama-2.7b", env=env)
    assert result.returncode == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and f"downloaded {shard} has SHA-256" in lines[0], result.stderr
    model = Layout(root).model("ref-sheared-llama-2.7b")
    assert not (model.raw_checkpoint_dir / shard).exists()
    assert not list(model.cache.rglob(f"{shard}*"))  # the bad bytes are not kept to resume
    assert not model.source.exists()


def test_the_catalogs_sha256_is_checked_against_the_hub(upstream, tmp_path):
    """The packaged catalog pins the real shards' hashes; the synthetic ones differ."""
    catalog = _packaged_catalog()
    root = tmp_path / "storage"
    with FakeHub(_repos(upstream, catalog, only=("ref-sheared-llama-2.7b",))) as hub:
        env = hub_env(hub, tmp_path / "hf-home")
        result = _run(root, None, "models", "download", "ref-sheared-llama-2.7b", env=env)
        assert not [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert result.returncode == 1
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "serves pytorch_model-00001-of-00002.bin with SHA-256" in lines[0]
    assert "the catalog expects ee766e6759aa" in lines[0]


def test_a_dataset_download_through_the_hub_records_the_commit(upstream, catalog_file, tmp_path):
    catalog = yaml.safe_load(catalog_file.read_text())
    root = tmp_path / "storage"
    with FakeHub(_repos(upstream, catalog, only=("mbpp",))) as hub:
        env = hub_env(hub, tmp_path / "hf-home")
        result = _run(root, catalog_file, "data", "download", "mbpp", "--json", env=env)
        listing = [r for r in hub.requests if "/api/datasets/" in r[1]]
    assert result.returncode == 0, result.stderr
    source = json.loads(result.stdout)
    assert source["revision"] == _commit("main", "google-research-datasets/mbpp")
    assert listing[0][1].endswith("/revision/main")
    dataset = Layout(root).dataset("mbpp")
    for name, digest in source["upstream_files"].items():
        assert _sha(dataset.cache / name) == digest == _sha(upstream / "mbpp" / name)
    rows = [json.loads(line) for line in (dataset.raw / "mbpp.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {"task_id", "text", "code", "test_list"} <= set(rows[0])


def test_a_file_gone_from_the_hub_and_the_listing_api(catalog_file, tmp_path):
    """A 404 on resolve is one line; the tree listing answers the real client too."""
    upstream = _big_meta_upstream(tmp_path / "upstream", 1024)
    with FakeHub([FakeRepo(META_REPO, "model", upstream, "c" * 40, gated=True)]) as hub:
        env = hub_env(hub, tmp_path / "hf-home")
        hub.vanished.add("7B_1T_4/params.json")
        result = _run(tmp_path / "s", catalog_file, "models", "download", "meta-llama-mtp", env=env)
        listing = subprocess.run(
            [
                sys.executable,
                "-c",
                "from huggingface_hub import HfApi; "
                f"print(sorted(HfApi().list_repo_files({META_REPO!r}, revision='c' * 40)))",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    assert result.returncode == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and f"a catalog file is missing from {META_REPO}" in lines[0]
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == str(
        sorted(["7B_1T_4/consolidated.pth", "7B_1T_4/params.json", "tokenizer.model"])
    )
