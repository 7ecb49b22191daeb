"""The build engine: step selection, skipping, logging, interruption, manifest refresh.

The engine is exercised with the real dataset steps (mbpp from a synthetic upstream mirror)
and, for interruption and failure paths, with steps whose actions are replaced.
"""

import json
import shutil

import pytest

from weighted_mtp import assets
from weighted_mtp.catalog import load_catalog
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.pipeline import build as b
from weighted_mtp.pipeline import records
from weighted_mtp.pipeline.manifest import load_manifest
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import TEMP_MARKER

MBPP_STEPS = ["init", "download-mbpp", "prepare-mbpp", "small-mbpp"]


@pytest.fixture(scope="module")
def mbpp_mirror(tmp_path_factory):
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.storage.atomic import atomic_write

    mirror = tmp_path_factory.mktemp("mirror")
    write_mbpp_mirror(mirror / "mbpp", atomic_write, n_tasks=24)
    return mirror


@pytest.fixture
def with_tokenizer(layout, sp_model_path):
    """prepare's default tokenizer is the Meta model's; give the storage one."""
    target = layout.model("meta-llama-mtp").tokenizer_model
    shutil.copyfile(sp_model_path, target)
    return layout


def _statuses(result):
    return {o.name: o.status for o in result.outcomes}


def test_select_steps_by_name_group_and_start():
    assert [s.name for s in b.select_steps(["verify"])] == ["verify"]
    assert [s.name for s in b.select_steps(["download"])] == [
        "download-meta",
        "download-ref",
        *(f"download-{name}" for name in assets.DATASETS),
    ]
    assert [s.name for s in b.select_steps(start="verify")] == ["verify", "report"]
    assert len(b.select_steps()) == len(b.STEP_NAMES)
    assert b.STEP_NAMES[0] == "init" and b.STEP_NAMES[-1] == "report"


@pytest.mark.parametrize("only,start", [(["nope"], None), ([], "nope"), (["init"], "init")])
def test_bad_step_selection_is_a_usage_error(only, start):
    with pytest.raises(UsageError):
        b.select_steps(only, start)


def test_real_dataset_steps_run_then_skip_and_keep_the_manifest(with_tokenizer, mbpp_mirror):
    layout = with_tokenizer
    first = b.build(layout, load_catalog(), mirror=mbpp_mirror, only=MBPP_STEPS)
    assert _statuses(first) == {
        "init": "skipped",
        "download-mbpp": "ran",
        "prepare-mbpp": "ran",
        "small-mbpp": "ran",
    }
    assert first.manifest_written
    paths = [e["path"] for e in load_manifest(layout)["files"]]
    assert "datasets_v2/mbpp/processed/train.jsonl" in paths
    assert "datasets_local_small/mbpp_small/train_small.jsonl" in paths
    manifest = layout.manifest.read_bytes()

    second = b.build(layout, load_catalog(), mirror=mbpp_mirror, only=MBPP_STEPS)
    assert set(_statuses(second).values()) == {"skipped"}
    assert not second.changed_anything
    assert layout.manifest.read_bytes() == manifest

    log = records.read_log(layout)
    assert [e["status"] for e in log if e["step"] == "prepare-mbpp"] == ["ran", "skipped"]
    assert set(records.last_timings(layout)) == {"download-mbpp", "prepare-mbpp", "small-mbpp"}


def test_damaged_output_makes_its_step_run_again(with_tokenizer, mbpp_mirror):
    layout = with_tokenizer
    b.build(layout, load_catalog(), mirror=mbpp_mirror, only=MBPP_STEPS)
    processed = layout.dataset("mbpp").split("train")
    processed.write_text(processed.read_text()[:-20])
    again = b.build(layout, load_catalog(), mirror=mbpp_mirror, only=MBPP_STEPS)
    assert _statuses(again)["prepare-mbpp"] == "ran"
    assert _statuses(again)["download-mbpp"] == "skipped"
    assert _statuses(again)["small-mbpp"] == "skipped"  # prepared again to the same splits


def test_a_finished_download_is_kept_whatever_its_source_unless_refreshed(
    with_tokenizer, mbpp_mirror, tmp_path
):
    layout = with_tokenizer
    b.build(layout, load_catalog(), mirror=mbpp_mirror, only=["download-mbpp"])
    other = tmp_path / "other-mirror"
    shutil.copytree(mbpp_mirror, other)
    kept = b.build(layout, load_catalog(), mirror=other, only=["download-mbpp"])
    assert _statuses(kept) == {"download-mbpp": "skipped"}
    assert kept.outcomes[0].detail.startswith(f"kept files from mirror {mbpp_mirror / 'mbpp'},")
    hub = b.build(layout, load_catalog(), only=["download-mbpp"])  # offline: not needed
    assert _statuses(hub) == {"download-mbpp": "skipped"}
    again = b.build(layout, load_catalog(), mirror=other, only=["download-mbpp"], refresh=True)
    assert _statuses(again) == {"download-mbpp": "ran"}
    assert json.loads(layout.dataset("mbpp").source.read_text())["mirror"] == str(other / "mbpp")


def _replace_action(monkeypatch, name, action):
    steps = [
        b.Step(s.name, s.group, s.describe, action, lambda ctx: False, s.changes_assets)
        if s.name == name
        else s
        for s in b.STEPS
    ]
    monkeypatch.setattr(b, "STEPS", steps)


def test_interrupted_step_is_logged_and_the_manifest_catches_up_next_time(layout, monkeypatch):
    weights = layout.model("micro-mtp").weights

    def write_then_interrupt(ctx):
        weights.write_bytes(b"finished output")
        raise KeyboardInterrupt

    _replace_action(monkeypatch, "micro-mtp", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        b.build(layout, load_catalog(), only=["micro-mtp"])
    assert records.read_log(layout)[-1]["status"] == "interrupted"
    assert not layout.manifest.exists()

    result = b.build(layout, load_catalog(), only=["init"])
    assert result.manifest_written
    weights_path = "models_v2/micro-mtp/safetensors/model.safetensors"
    assert weights_path in [e["path"] for e in load_manifest(layout)["files"]]
    assert weights_path in result.manifest_diff.unexpected


def test_changes_made_outside_the_build_are_recorded_and_named(layout):
    b.build(layout, load_catalog(), only=["init"])
    extra = layout.small("mbpp").split("test")
    extra.write_text("{}\n")
    result = b.build(layout, load_catalog(), only=["init"])
    assert result.manifest_written
    assert result.manifest_diff.unexpected == [layout.relative(extra)]
    assert {o.status for o in result.outcomes} == {"skipped"}


def test_failed_step_stops_the_build_with_its_error(layout, monkeypatch):
    def fail(ctx):
        raise WmtpError("upstream file is corrupt", path="x")

    _replace_action(monkeypatch, "micro-mtp", fail)
    seen = []
    with pytest.raises(WmtpError, match="corrupt"):
        b.build(
            layout,
            load_catalog(),
            only=["micro-mtp", "micro-ref"],
            listener=lambda event, step, outcome: seen.append((event, step.name)),
        )
    assert seen == [("start", "micro-mtp"), ("end", "micro-mtp")]
    assert records.read_log(layout)[-1]["status"] == "failed"


def test_leftover_temp_files_are_removed(layout):
    leftover = layout.model("micro-ref").safetensors_dir / f".model.safetensors{TEMP_MARKER}ab"
    leftover.write_bytes(b"half a tensor")
    cached = layout.model("micro-ref").cache / f".x{TEMP_MARKER}cd"
    cached.parent.mkdir()
    cached.write_bytes(b"a download tool's own business")
    result = b.build(layout, load_catalog(), only=["init"])
    assert result.removed_leftovers == [layout.relative(leftover)]
    assert not leftover.exists() and cached.exists()


def test_missing_mirror_folder_for_an_asset_is_named(layout, tmp_path):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(WmtpError, match="no folder for mbpp"):
        b.build(layout, load_catalog(), mirror=tmp_path / "mirror", only=["download-mbpp"])
    assert records.read_log(layout)[-1]["status"] == "failed"


def test_a_catalog_pinning_another_commit_downloads_hub_files_again(
    with_tokenizer, mbpp_mirror, tmp_path
):
    from importlib import resources

    import yaml

    layout = with_tokenizer
    b.build(layout, load_catalog(), mirror=mbpp_mirror, only=["download-mbpp"])
    source_file = layout.dataset("mbpp").source
    source = json.loads(source_file.read_text())
    source_file.write_text(json.dumps({**source, "mirror": None, "revision": "a" * 40}))
    catalog = yaml.safe_load(resources.files("weighted_mtp").joinpath("catalog.yaml").read_text())
    pinned = tmp_path / "catalog.yaml"
    for commit, status in (("a" * 40, "skipped"), ("0" * 40, "ran")):
        catalog["datasets"]["mbpp"]["revision"] = commit
        pinned.write_text(yaml.safe_dump(catalog))
        again = b.build(layout, load_catalog(pinned), mirror=mbpp_mirror, only=["download-mbpp"])
        assert _statuses(again) == {"download-mbpp": status}


def test_a_changed_raw_file_reruns_exactly_its_datasets_steps(with_tokenizer, tmp_path):
    """The store records each prepared dataset's raw inputs: the same bytes rewritten rerun
    nothing (input hashes), new bytes rerun that dataset's prepare and small steps only."""
    from weighted_mtp.assets.benchmarks.humaneval import write_humaneval_mirror
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.storage.atomic import atomic_write

    layout = with_tokenizer
    mirror = tmp_path / "mirror"
    write_mbpp_mirror(mirror / "mbpp", atomic_write, n_tasks=24)
    write_humaneval_mirror(mirror / "humaneval", atomic_write)
    steps = [*MBPP_STEPS, "download-humaneval", "prepare-humaneval", "small-humaneval"]
    b.build(layout, load_catalog(), mirror=mirror, only=steps)

    raw = layout.dataset("mbpp").raw / "mbpp.jsonl"
    raw.write_bytes(raw.read_bytes())  # a new mtime, the same bytes
    same = b.build(layout, load_catalog(), mirror=mirror, only=steps)
    assert set(_statuses(same).values()) == {"skipped"}

    upstream = mirror / "mbpp" / "mbpp.jsonl"  # upstream changed: one task fewer
    upstream.write_text("".join(upstream.read_text().splitlines(keepends=True)[:-1]))
    again = b.build(layout, load_catalog(), mirror=mirror, only=steps, refresh=True)
    assert {name for name, status in _statuses(again).items() if status == "ran"} == {
        "download-mbpp",
        "prepare-mbpp",
        "small-mbpp",
        "download-humaneval",  # fetched again (--refresh), the same bytes: nothing follows
    }
    assert freshness.Store(layout).inputs_unchanged("mbpp")  # verified by the validate step
    assert freshness.is_current(layout, "mbpp_small")


def test_the_manifest_reuses_the_hashes_of_a_converted_models_verification(
    layout, sp_model_path, tmp_path, monkeypatch
):
    from collections import Counter

    import weighted_mtp.storage.hashing as hashing
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.storage import freshness
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    params = {
        "dim": 64,
        "n_layers": 3,
        "n_heads": 2,
        "multiple_of": 32,
        "n_future_tokens": 2,
        "vocab_size": 8320,
    }
    mirror = write_meta_mirror(tmp_path / "meta", tokenizer_model=sp_model_path, params=params)
    download_model(layout, load_catalog(), "meta-llama-mtp", mirror=mirror)
    reads, real = Counter(), hashing.sha256_file

    def counting(path, **kwargs):
        reads[str(path)] += 1
        return real(path, **kwargs)

    for module in (freshness, hashing):
        monkeypatch.setattr(module, "sha256_file", counting)
    result = b.build(layout, load_catalog(), only=["convert-meta"])
    assert _statuses(result) == {"convert-meta": "ran"}
    assert result.manifest_written
    assert reads[str(layout.model("meta-llama-mtp").weights)] == 1


def test_a_log_line_cut_inside_a_character_is_ignored(layout):
    whole = '{"run": "r", "step": "init", "status": "ran", "seconds": 1, "at": "t"}\n'
    cut = '{"run": "r", "step": "verify", "status": "failed", "detail": "sha …'.encode()[:-2]
    layout.build_log.parent.mkdir(parents=True, exist_ok=True)
    layout.build_log.write_bytes(whole.encode() + cut)
    assert [entry["step"] for entry in records.read_log(layout)] == ["init"]


def test_the_entry_after_a_cut_line_starts_a_line_of_its_own(layout):
    layout.build_log.parent.mkdir(parents=True, exist_ok=True)
    layout.build_log.write_bytes(b'{"run": "r", "step": "verify", "sta')
    b._log(layout, "r2", b.StepOutcome("init", 1, "ran", 0.5))
    assert [(e["run"], e["step"]) for e in records.read_log(layout)] == [("r2", "init")]
    b._log(layout, "r2", b.StepOutcome("report", 10, "ran", 0.1))
    assert [e["step"] for e in records.read_log(layout)] == ["init", "report"]
