from pathlib import Path

from weighted_mtp.storage.init import init_storage
from weighted_mtp.storage.layout import Layout


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_init_is_idempotent_and_keeps_files(tmp_path: Path):
    layout = Layout(tmp_path / "storage")
    first = init_storage(layout)
    assert first.created and not first.existing
    assert layout.model("meta-llama-mtp").sha256sums.read_bytes() == b""
    kept = layout.dataset("mbpp").raw / "mbpp.jsonl"
    kept.write_text("{}\n")
    layout.model("meta-llama-mtp").sha256sums.write_text("abc\n")
    before = _snapshot(layout.root)
    second = init_storage(layout)
    assert not second.created
    assert _snapshot(layout.root) == before
