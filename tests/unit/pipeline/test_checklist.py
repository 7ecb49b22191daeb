"""The checklist on partial storages: each step says ✘ with a reason and the files concerned.

A complete storage (every step ✔) is covered end to end in test_end_to_end.py.
"""

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline.checklist import STEP_TITLES, Checklist, last_checklist, run_checklist
from weighted_mtp.pipeline.manifest import refresh_manifest
from weighted_mtp.storage.atomic import TEMP_MARKER


def _step(checklist, number):
    return checklist.steps[number]


def test_fresh_layout_passes_steps_0_and_1_and_fails_the_rest(layout):
    checklist = run_checklist(layout)
    assert [s.number for s in checklist.steps] == list(range(12))
    assert _step(checklist, 0).ok and _step(checklist, 1).ok
    assert [s.number for s in checklist.failed()] == list(range(2, 12))
    assert not checklist.ok
    assert "not downloaded" in _step(checklist, 2).reason
    assert "models_v2/meta-llama-mtp/raw/SOURCE.json" in _step(checklist, 2).files
    assert "MANIFEST.json" in _step(checklist, 9).files
    assert "not approved yet" in _step(checklist, 11).reason
    assert set(STEP_TITLES) == set(range(12))


def test_step0_names_legacy_folders_and_leftovers(layout):
    (layout.root / "models").mkdir()
    leftover = layout.small("mbpp").root / f".train_small.jsonl{TEMP_MARKER}zz"
    leftover.write_text("{")
    step0 = _step(run_checklist(layout, through=0), 0)
    assert not step0.ok
    assert set(step0.files) == {"models", layout.relative(leftover)}


def test_step1_names_a_missing_folder(layout):
    layout.dataset("humaneval").stats.rmdir()
    step1 = _step(run_checklist(layout, through=1), 1)
    assert not step1.ok
    assert step1.files == ["datasets_v2/humaneval/stats"]


def test_step9_names_a_changed_file_against_the_manifest(layout):
    small = layout.small("mbpp").split("train")
    small.write_text('{"x": 1}\n')
    refresh_manifest(layout)
    assert "tree matches MANIFEST.json" in [
        c.name for c in _step(run_checklist(layout, through=9), 9).report.checks if c.ok
    ]
    small.write_text('{"x": 2}\n')
    step9 = _step(run_checklist(layout, through=9), 9)
    assert not step9.ok
    assert "datasets_local_small/mbpp_small/train_small.jsonl" in step9.files
    assert "changed" in step9.reason


def test_saved_result_roundtrips_and_goes_stale_with_the_manifest(layout):
    refresh_manifest(layout)
    checklist = run_checklist(layout, through=9)
    saved = last_checklist(layout)
    assert saved is not None
    assert saved.to_dict() == checklist.to_dict()
    assert Checklist.from_dict(checklist.to_dict()).to_dict() == checklist.to_dict()
    layout.small("mbpp").split("train").write_text("{}\n")
    refresh_manifest(layout)
    assert last_checklist(layout) is None


def test_missing_root_is_a_user_error(tmp_path):
    from weighted_mtp.storage.layout import Layout

    with pytest.raises(WmtpError, match="does not exist"):
        run_checklist(Layout(tmp_path / "nowhere"))


def test_step2_names_a_raw_file_that_differs_from_its_download_record(layout):
    import hashlib
    import json

    for name in ("meta-llama-mtp", "ref-sheared-llama-2.7b"):
        paths = layout.model(name)
        raw = paths.raw_checkpoint_dir / "weights.bin"
        raw.parent.mkdir(parents=True)
        raw.write_bytes(b"as downloaded")
        digest = hashlib.sha256(b"as downloaded").hexdigest()
        paths.source.write_text(
            json.dumps(
                {"files": {layout.relative(raw).split(f"{name}/", 1)[1]: {"sha256": digest}}}
            )
        )
    assert _step(run_checklist(layout, through=2), 2).ok
    damaged = layout.model("ref-sheared-llama-2.7b").raw_checkpoint_dir / "weights.bin"
    damaged.write_bytes(b"as downloadeD")
    step2 = _step(run_checklist(layout, through=2), 2)
    assert not step2.ok
    assert step2.files == [layout.relative(damaged)]
