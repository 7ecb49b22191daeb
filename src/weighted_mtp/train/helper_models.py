"""The helper models of the weighted experiments: the critic of a `wmtp train critic` run
(Verifiable Critic), the reference of a `wmtp train ref-tune` run, a storage model or a
model folder (Rho-1); found, checked, and built frozen on this rank (`builders`: each rank
reads only its shard when the helper is sharded).

A helper must share the policy's tokenizer: its tokenizer file has the policy's SHA-256,
and the storage recorded `tokenizer_shared_with` for it (the piece-by-piece comparison
`wmtp models convert` makes). Anything wrong is one error before a run folder is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.assets import reference_pairs
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import read_json_or_none
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.layout import MODELS, Layout, ModelPaths, RunFolder
from weighted_mtp.train.config import TrainConfig, with_overrides
from weighted_mtp.train.final import CRITIC_WEIGHTS, STAGE_FILE

if TYPE_CHECKING:
    from torch import nn

    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.frozen import Placement


@dataclass(frozen=True)
class Helper:
    """A stage-1 model on disk: its folder, tokenizer and what the storage says about it."""

    what: str
    folder: Path
    tokenizer: Path
    shared_with: str | None
    record: dict[str, Any]


def stage_one_run(run: str, kind: str) -> Helper:
    """A finished `wmtp train <kind>` run, or one clear error."""
    if not run:
        raise WmtpError(
            f"no {kind} run given",
            hint=f"pass --{'critic' if kind == 'critic' else 'reference'} RUN_DIR "
            f"(from `wmtp train {kind}`)",
        )
    final = RunFolder(Path(run).expanduser()).final
    record = read_json_or_none(final / STAGE_FILE, STAGE_FILE)
    if not isinstance(record, dict) or record.get("kind") != kind:
        raise WmtpError(
            f"{run} is not a finished {kind} run (no final/{STAGE_FILE})",
            path=run,
            hint=f"run `wmtp train {kind}` first and pass its run folder",
        )
    return Helper(
        f"{kind} run {run}",
        final,
        final / "tokenizer" / "tokenizer.model",
        record.get("tokenizer_shared_with"),
        record,
    )


def reference_helper(layout: Layout, reference: str) -> Helper:
    """`--reference RUN|MODEL`: a ref-tune run folder, a storage model or a model folder."""
    if reference in MODELS:
        paths = layout.model(reference)
    elif (RunFolder(Path(reference).expanduser()).final / STAGE_FILE).is_file():
        return stage_one_run(reference, "ref-tune")
    elif Path(reference).expanduser().is_dir():
        folder = Path(reference).expanduser()
        paths = ModelPaths(folder.name, folder)
    else:
        return stage_one_run(reference, "ref-tune")  # the missing-run error
    metadata = read_json_or_none(paths.metadata, "metadata.json") or {}
    return Helper(
        f"reference {reference}",
        paths.root,
        paths.tokenizer_model,
        metadata.get("tokenizer_shared_with"),
        {},
    )


def require_shared_tokenizer(policy: ModelPaths, helper: Helper) -> None:
    """The helper reads text with exactly the policy's tokenizer, or one clear error."""
    if not helper.tokenizer.is_file():
        raise WmtpError(f"the {helper.what} has no tokenizer", path=helper.tokenizer)
    if not helper.shared_with:
        raise WmtpError(
            f"the {helper.what} does not record a tokenizer shared with the policy "
            "(tokenizer_shared_with is empty)",
            path=helper.folder,
            hint="use a reference whose conversion verified its tokenizer against Meta's",
        )
    mine, theirs = sha256_file(policy.tokenizer_model), sha256_file(helper.tokenizer)
    if mine != theirs:
        raise WmtpError(
            f"the {helper.what} uses another tokenizer than the policy {policy.name} "
            f"(SHA-256 {theirs[:12]}… vs {mine[:12]}…)",
            path=helper.tokenizer,
            hint="train the critic / reference from a model that shares the policy's "
            f"tokenizer ({reference_pairs()})",
        )


def critic_helper(config: TrainConfig) -> Helper:
    """The Verifiable Critic's critic run (`critic.run`, `--critic`)."""
    return stage_one_run(config.critic.run, "critic")


def rho1_helper(layout: Layout, config: TrainConfig) -> Helper:
    """Rho-1's reference (`rho1.reference`, `--reference`)."""
    if not config.rho1.reference:
        raise WmtpError("no reference given", hint="pass --reference RUN|MODEL (a ref-tune run)")
    return reference_helper(layout, config.rho1.reference)


def load_critic(
    helper: Helper, config: TrainConfig, dist_info: Dist
) -> tuple[nn.Module, Placement]:
    """The trained value model of a critic run, built as it trained (its recorded LoRA and
    head) and read from its `critic.safetensors`, placed for scoring on this rank."""
    from weighted_mtp.train.builders import build_frozen_critic

    record = helper.record
    lora = record.get("lora") or {}
    overrides = {"critic.head_hidden": record["head_hidden"]}
    overrides |= {f"lora.{k}": v for k, v in lora.items()}
    built_with = with_overrides(config, overrides, STAGE_FILE)
    base = Path(record["base_model"])
    base_config = ModelPaths(base.name, base).hf_config
    return build_frozen_critic(base_config, helper.folder / CRITIC_WEIGHTS, built_with, dist_info)


def load_reference(
    helper: Helper, config: TrainConfig, dist_info: Dist
) -> tuple[nn.Module, Placement]:
    """The reference causal LM of a ref-tune run or a model folder, placed for scoring."""
    from weighted_mtp.train.builders import build_frozen_reference

    folder = ModelPaths(helper.folder.name, helper.folder)
    return build_frozen_reference(folder, config, dist_info)
