from weighted_mtp import assets
from weighted_mtp.storage import freshness
from weighted_mtp.storage.status import asset_statuses, model_state, storage_tree


def test_model_states_follow_the_files(layout):
    meta = layout.model("meta-llama-mtp")
    assert model_state(layout, "meta-llama-mtp") == "missing"
    (meta.raw_checkpoint_dir).mkdir(parents=True)
    (meta.raw_checkpoint_dir / "params.json").write_text("{}")
    assert model_state(layout, "meta-llama-mtp") == "raw-only"
    meta.weights.write_bytes(b"w")
    assert model_state(layout, "meta-llama-mtp") == "converted"
    freshness.record_verified(layout, meta.name)
    assert model_state(layout, "meta-llama-mtp") == "verified"
    meta.weights.write_bytes(b"changed")
    assert model_state(layout, "meta-llama-mtp") == "converted"


def test_statuses_cover_every_asset_and_tree_sums_sizes(layout):
    layout.dataset("mbpp").split("train").write_text("x" * 10)
    rows = {(r.kind, r.name): r for r in asset_statuses(layout)}
    assert len(rows) == len(assets.MODELS) + 2 * len(assets.DATASETS)  # datasets and samples
    assert rows[("dataset", "mbpp")].state == "prepared"
    assert rows[("dataset", "mbpp")].size == 10
    tree = storage_tree(layout.root, depth=3)
    assert tree.size == 10
    names = [c.name for c in tree.children]
    assert names == ["datasets_local_small", "datasets_v2", "models_v2"]
