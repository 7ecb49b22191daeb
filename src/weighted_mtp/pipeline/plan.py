"""The completion checklist as data: the check groups in the order they print.

Checks are named by what they check (`"Meta model"`, `"integrity"`); the step numbers
appear only here, to print the checklist in its order ("Step 3: ..."). Changing the
checklist means editing this table, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from weighted_mtp.assets import BASE_MODELS, DATASETS
from weighted_mtp.storage.layout import STORAGE_VERSION

DEFAULT_TAG = f"v{STORAGE_VERSION}"  # what the checklist's sign-off releases the storage as


@dataclass(frozen=True)
class PlanStep:
    number: int
    group: str  # the check group, as `pipeline.checklist` names it
    title: str


PLAN: tuple[PlanStep, ...] = (
    PlanStep(0, "environment", "clean start, environment ready"),
    PlanStep(1, "layout", "directory layout"),
    PlanStep(2, "raw models", f"raw model downloads ({', '.join(BASE_MODELS)})"),
    PlanStep(3, "Meta model", "Meta MTP model converted and verified"),
    PlanStep(4, "reference", "reference model converted and verified"),
    PlanStep(5, "micro", "micro models built and verified"),
    PlanStep(6, "raw datasets", f"raw datasets ({', '.join(DATASETS)})"),
    PlanStep(7, "dataset code", "preprocessing and validation code"),
    PlanStep(8, "processed datasets", "processed datasets, stats and small sets"),
    PlanStep(9, "integrity", "integrity of every asset (manifest, checksums)"),
    PlanStep(10, "documents", "documents (README, reports) match the storage"),
    PlanStep(11, "approval", "checklist complete, approved, tagged and backed up"),
)
GROUPS = tuple(step.group for step in PLAN)
_BY_GROUP = {step.group: step for step in PLAN}

# The groups about the assets themselves; documents and approval describe them.
LAST_ASSET_GROUP = "integrity"
SIGN_OFF_GROUP = "approval"  # approval, tag and backup of the current manifest
ASSET_GROUPS = GROUPS[: GROUPS.index(LAST_ASSET_GROUP) + 1]
BEFORE_APPROVAL = GROUPS[: GROUPS.index(SIGN_OFF_GROUP)]


def plan_step(group: str) -> PlanStep:
    return _BY_GROUP[group]


def groups_through(last: str) -> tuple[str, ...]:
    """The groups up to and including `last`, in checklist order."""
    return GROUPS[: GROUPS.index(last) + 1]


def label(group: str) -> str:
    """How the checklist names a group: `Step 3`."""
    return f"Step {plan_step(group).number}"
