"""What the storage holds: each asset's state, and the tree with sizes.

"verified" is the freshness store's answer (`freshness.Store.is_current`): the asset passed
verification and neither it nor what it was built from changed since."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp import assets
from weighted_mtp.storage import freshness
from weighted_mtp.storage.layout import DATASETS, MODELS, SPLITS, Layout
from weighted_mtp.storage.tree import iter_files, tree_size


@dataclass
class AssetStatus:
    kind: str
    name: str
    state: str
    size: int
    path: str


def _has_files(path: Path, ignore: tuple[str, ...] = ()) -> bool:
    return any(p.name not in ignore for p in iter_files(path))


def model_state(layout: Layout, name: str, store: freshness.Store | None = None) -> str:
    """missing, raw-only, converted or verified."""
    paths = layout.model(name)
    if paths.weights.is_file():
        current = (store or freshness.Store(layout)).is_current(name)
        return "verified" if current else "converted"
    downloaded = "download" in assets.spec(name).build
    if downloaded and _has_files(paths.raw, ignore=("SOURCE.json",)):
        return "raw-only"
    return "missing"


def dataset_state(layout: Layout, name: str, store: freshness.Store | None = None) -> str:
    """missing, raw-only, prepared or verified (prepared from the raw files there now)."""
    paths = layout.dataset(name)
    if any(paths.split(split).is_file() for split in SPLITS):
        current = (store or freshness.Store(layout)).is_current(name)
        return "verified" if current else "prepared"
    if _has_files(paths.raw, ignore=("SOURCE.json",)):
        return "raw-only"
    return "missing"


def small_state(layout: Layout, name: str) -> str:
    small = layout.small(name)
    return "present" if any(small.split(s).is_file() for s in SPLITS) else "missing"


def asset_statuses(layout: Layout) -> list[AssetStatus]:
    store = freshness.Store(layout)
    rows = []
    for name in MODELS:
        root = layout.model(name).root
        state = model_state(layout, name, store)
        rows.append(AssetStatus("model", name, state, tree_size(root), layout.relative(root)))
    for name in DATASETS:
        root = layout.dataset(name).root
        state = dataset_state(layout, name, store)
        rows.append(AssetStatus("dataset", name, state, tree_size(root), layout.relative(root)))
    for name in DATASETS:
        root = layout.small(name).root
        rows.append(
            AssetStatus(
                "small set", name, small_state(layout, name), tree_size(root), layout.relative(root)
            )
        )
    return rows


@dataclass
class TreeNode:
    name: str
    size: int
    is_dir: bool
    children: list[TreeNode]

    def to_dict(self) -> dict[str, Any]:
        node: dict[str, Any] = {"name": self.name, "size": self.size, "dir": self.is_dir}
        if self.is_dir:
            node["children"] = [c.to_dict() for c in self.children]
        return node


def storage_tree(path: Path, depth: int = 3) -> TreeNode:
    """The tree under `path` to `depth` levels (folders deeper down are summed, not listed)."""
    if path.is_symlink() or not path.is_dir():
        size = 0 if path.is_symlink() else path.stat().st_size
        return TreeNode(path.name, size, False, [])
    children = []
    if depth > 0:
        children = [storage_tree(child, depth - 1) for child in sorted(path.iterdir())]
        size = sum(c.size for c in children)
    else:
        size = tree_size(path)
    return TreeNode(path.name, size, True, children)
