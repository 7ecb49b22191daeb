"""`wmtp demo`: the whole pipeline on a machine that cannot reach the model hub.

It writes upstream-format sources into a mirror folder (a small random Meta MTP checkpoint,
a small sharded Hugging Face Llama reference, a locally trained Llama-2-style tokenizer, and
each benchmark's synthetic mirror in its upstream schema: the real HumanEval, small
CodeContests and MBPP), then runs the very
build a real user runs with `--mirror`, and verifies the result. Only the sources are
synthetic; every step after them is the production code path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp import assets, progress
from weighted_mtp.catalog import Catalog
from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline.approve import approve
from weighted_mtp.pipeline.backup import BackupResult, backup
from weighted_mtp.pipeline.backup_record import backup_status
from weighted_mtp.pipeline.build import BuildResult, Listener, build
from weighted_mtp.pipeline.checklist import run_checklist
from weighted_mtp.pipeline.manifest import manifest_sha256
from weighted_mtp.pipeline.plan import DEFAULT_TAG
from weighted_mtp.pipeline.records import Checklist, approval_status
from weighted_mtp.storage.atomic import atomic_write, read_json, write_text
from weighted_mtp.storage.layout import META_MODEL, REFERENCE_MODEL, Layout
from weighted_mtp.synthetic.llama_tokenizer import train_llama_style_tokenizer
from weighted_mtp.synthetic.model_mirrors import write_meta_mirror, write_reference_mirror

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("demo-storage")
DEMO_APPROVER = "wmtp demo (synthetic sources, approved automatically)"
MIRROR_COMPLETE = "MIRROR_COMPLETE"


def mirror_for(root: Path) -> Path:
    """The demo's upstream mirror sits beside its storage root, never inside it."""
    root = Path(root).expanduser().absolute()
    return root.parent / f"{root.name}-mirror"


def backup_for(root: Path) -> Path:
    """The demo's backup sits beside its storage root too."""
    root = Path(root).expanduser().absolute()
    return root.parent / f"{root.name}-backup"


def write_demo_mirror(mirror: Path) -> Path:
    """Upstream-format sources for every asset under `mirror/<asset>/`; written once."""
    if (mirror / MIRROR_COMPLETE).is_file():
        return mirror
    log.info(f"writing upstream-format sources to {mirror} (first run only)")
    with progress.status("writing the upstream-format sources"):
        tokenizer = train_llama_style_tokenizer(mirror / "_work" / "tokenizer.model")
        write_meta_mirror(mirror / META_MODEL, tokenizer_model=tokenizer)
        write_reference_mirror(mirror / REFERENCE_MODEL, tokenizer_model=tokenizer)
        write_dataset_mirrors(mirror)
    write_text(mirror / MIRROR_COMPLETE, "every asset's upstream files are written\n")
    return mirror


def write_dataset_mirrors(mirror: Path) -> None:
    """Each benchmark's synthetic upstream files under `mirror/<dataset>/`."""
    for benchmark in assets.BENCHMARKS:
        benchmark.write_mirror(mirror / benchmark.name, atomic_write)


def refuse_foreign_root(layout: Layout, mirror: Path) -> None:
    """Never put synthetic assets over real ones: a root whose assets came from anywhere
    but this demo's mirror is refused."""
    for path in layout.sources().values():
        if not path.is_file():
            continue
        recorded = read_json(path, "SOURCE.json").get("mirror")
        if recorded is None or not Path(recorded).is_relative_to(mirror):
            raise WmtpError(
                "this storage root holds assets that the demo did not make",
                path=path,
                hint="give `wmtp demo --root` a folder of its own",
            )


@dataclass
class DemoResult:
    layout: Layout
    mirror: Path
    build: BuildResult
    checklist: Checklist
    approved_now: bool
    backed_up: BackupResult | None  # None when a verified backup of this state existed

    def to_dict(self) -> dict[str, Any]:
        """What `wmtp demo --json` prints."""
        return {
            "root": str(self.layout.root),
            "mirror": str(self.mirror),
            "build": self.build.to_dict(),
            "approved_now": self.approved_now,
            "backup": None if self.backed_up is None else self.backed_up.to_dict(),
            "checklist": self.checklist.to_dict(),
        }


def run_demo(root: str | Path, catalog: Catalog, *, listener: Listener | None = None) -> DemoResult:
    """Mirror, build, approve and tag (as the demo: the sources are synthetic), back up
    beside the root, and verify."""
    layout = Layout(root)
    refuse_foreign_root(layout, mirror_for(layout.root))
    mirror = write_demo_mirror(mirror_for(layout.root))
    result = build(layout, catalog, mirror=mirror, listener=listener)
    approved_now = False
    if not approval_status(layout)[0]:
        # A tag names one state: each state the demo approves gets its own.
        tag = f"{DEFAULT_TAG}-demo.{(manifest_sha256(layout) or '')[:8]}"
        approve(layout, DEMO_APPROVER, tag)
        approved_now = True
    backed_up = None if backup_status(layout)[0] else backup(layout, backup_for(layout.root))
    return DemoResult(layout, mirror, result, run_checklist(layout), approved_now, backed_up)
