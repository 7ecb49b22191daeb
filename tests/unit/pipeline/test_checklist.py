"""The checklist on partial storages: each group says ✘ with a reason and the files concerned.

A complete storage (every step ✔) is covered end to end in test_end_to_end.py.
"""

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline.checklist import CHECKS, run_checklist
from weighted_mtp.pipeline.manifest import refresh_manifest
from weighted_mtp.pipeline.plan import GROUPS, PLAN
from weighted_mtp.pipeline.records import Checklist, last_checklist
from weighted_mtp.storage.atomic import TEMP_MARKER


def _step(checklist, group):
    return next(step for step in checklist.steps if step.group == group)


def test_fresh_layout_passes_environment_and_layout_and_fails_the_rest(layout):
    checklist = run_checklist(layout)
    assert [s.number for s in checklist.steps] == list(range(12))
    assert [s.group for s in checklist.steps] == list(GROUPS)
    assert _step(checklist, "environment").ok and _step(checklist, "layout").ok
    assert [s.group for s in checklist.failed()] == list(GROUPS[2:])
    assert not checklist.ok
    assert "not downloaded" in _step(checklist, "raw models").reason
    assert "models_v2/meta-llama-mtp/raw/SOURCE.json" in _step(checklist, "raw models").files
    assert "MANIFEST.json" in _step(checklist, "integrity").files
    assert "not approved yet" in _step(checklist, "approval").reason


def test_the_plan_table_orders_every_check_group_once():
    assert [step.number for step in PLAN] == list(range(len(PLAN)))
    assert set(GROUPS) == set(CHECKS) and len(GROUPS) == len(set(GROUPS))


def test_environment_names_legacy_folders_and_leftovers(layout):
    (layout.root / "models").mkdir()
    leftover = layout.small("mbpp").root / f".train_small.jsonl{TEMP_MARKER}zz"
    leftover.write_text("{")
    step0 = _step(run_checklist(layout, through="environment"), "environment")
    assert not step0.ok
    assert set(step0.files) == {"models", layout.relative(leftover)}


def test_layout_names_a_missing_folder(layout):
    layout.dataset("humaneval").stats.rmdir()
    step1 = _step(run_checklist(layout, through="layout"), "layout")
    assert not step1.ok
    assert step1.files == ["datasets_v2/humaneval/stats"]


def test_integrity_names_a_changed_file_against_the_manifest(layout):
    small = layout.small("mbpp").split("train")
    small.write_text('{"x": 1}\n')
    refresh_manifest(layout)
    integrity = _step(run_checklist(layout, through="integrity"), "integrity")
    assert "tree matches MANIFEST.json" in [c.name for c in integrity.report.checks if c.ok]
    small.write_text('{"x": 2}\n')
    step9 = _step(run_checklist(layout, through="integrity"), "integrity")
    assert not step9.ok
    assert "datasets_local_small/mbpp_small/train_small.jsonl" in step9.files
    assert "changed" in step9.reason


def test_saved_result_roundtrips_and_goes_stale_with_the_manifest(layout):
    refresh_manifest(layout)
    checklist = run_checklist(layout, through="integrity")
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


def test_raw_models_names_a_raw_file_that_differs_from_its_download_record(layout):
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
    assert _step(run_checklist(layout, through="raw models"), "raw models").ok
    damaged = layout.model("ref-sheared-llama-2.7b").raw_checkpoint_dir / "weights.bin"
    damaged.write_bytes(b"as downloadeD")
    step2 = _step(run_checklist(layout, through="raw models"), "raw models")
    assert not step2.ok
    assert step2.files == [layout.relative(damaged)]
