"""The experiment table: every run `wmtp train` makes is one row, trained by the one trainer.

| experiment | model (builder)                 | loss (weighting)       | final/ writer        |
|------------|---------------------------------|------------------------|----------------------|
| baseline   | MTP policy (build_policy)       | MTP (uniform)          | save_policy_final    |
| critic     | value model (build_value_model) | value (mc or pairwise) | save_critic_final    |
| ref-tune   | reference LM (build_reference)  | next-token CE          | save_reference_final |
| verifiable | MTP policy (build_policy)       | MTP (critic AWR)       | save_policy_final    |
| rho1       | MTP policy (build_policy)       | MTP (Rho-1 selection)  | save_policy_final    |

Each row's config overlay is `configs/<experiment>_<size>.yaml` (`config.overlay_file`).
The overlays (in `configs/`, over `baseline_<size>.yaml`; `config.build_config`) change
only what defines the experiment, so the five runs share data order, seed and batch. A new
experiment is a new row: its overlay, a model kind, and a function making its objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.storage.layout import Layout, ModelPaths
from weighted_mtp.train.batches import Example, require_both_outcomes
from weighted_mtp.train.builders import (
    build_policy,
    build_reference,
    build_value_model,
    policy_structure,
    reference_structure,
    value_model_structure,
)
from weighted_mtp.train.config import TrainConfig
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.final import save_critic_final, save_policy_final, save_reference_final
from weighted_mtp.train.helper_models import (
    critic_helper,
    load_critic,
    load_reference,
    require_shared_tokenizer,
    rho1_helper,
)
from weighted_mtp.train.lora import TrainedModel
from weighted_mtp.train.objectives import (
    MtpObjective,
    NextTokenObjective,
    TrainingObjective,
    ValueObjective,
)
from weighted_mtp.train.weightings import Baseline, Rho1, VerifiableCritic, Weighting

Builder = Callable[[ModelPaths, TrainConfig, Dist], TrainedModel]
FinalWriter = Callable[[Path, TrainedModel, ModelPaths, TrainConfig, Dist], None]
# The model on the meta device from its architecture (MetaParams, or HfLlamaConfig for a
# Hugging Face model) and the run's config: what `build` loads, what `wmtp train plan` traces.
Structure = Callable[[Any, TrainConfig], TrainedModel]


@dataclass(frozen=True)
class ModelKind:
    """A kind of model a run trains: how it is built (and its structure without weights),
    and what `final/` holds of it."""

    name: str
    build: Builder
    structure: Structure
    write_final: FinalWriter


POLICY = ModelKind("MTP policy", build_policy, policy_structure, save_policy_final)
VALUE_MODEL = ModelKind("value model", build_value_model, value_model_structure, save_critic_final)
REFERENCE_LM = ModelKind("reference LM", build_reference, reference_structure, save_reference_final)


@dataclass(frozen=True)
class Setup:
    """What an objective is made from: the storage, the run's config, the trained model and
    this rank's place (where a frozen helper is built)."""

    layout: Layout
    config: TrainConfig
    model: TrainedModel
    dist: Dist


def weighted_mtp(make_weighting: Callable[[Setup], Weighting]) -> Callable[[Setup], MtpObjective]:
    """The MTP objective with the experiment's weighting, on the policy's heads."""

    def objective(setup: Setup) -> MtpObjective:
        return MtpObjective(make_weighting(setup), setup.model.heads, setup.config.naive_heads)

    return objective


def uniform(setup: Setup) -> Weighting:
    return Baseline(setup.config.normalize)


def critic_weights(setup: Setup) -> Weighting:
    config = setup.config
    critic, placement = load_critic(critic_helper(config), config, setup.dist)
    weighting = VerifiableCritic(critic, config.normalize, config.critic, frozen=config.frozen)
    weighting.placement = placement
    return weighting


def rho1_selection(setup: Setup) -> Weighting:
    config = setup.config
    reference, placement = load_reference(rho1_helper(setup.layout, config), config, setup.dist)
    weighting = Rho1(reference, config.normalize, config.rho1, frozen=config.frozen)
    weighting.placement = placement
    return weighting


def check_critic(layout: Layout, config: TrainConfig, policy: ModelPaths) -> None:
    require_shared_tokenizer(policy, critic_helper(config))


def check_reference(layout: Layout, config: TrainConfig, policy: ModelPaths) -> None:
    require_shared_tokenizer(policy, rho1_helper(layout, config))


def no_check(layout: Layout, config: TrainConfig, policy: ModelPaths) -> None:
    """Nothing besides the model and the data to check before the run."""


def any_records(examples: list[Example], path: Path) -> None:
    """Any split the config's filter leaves trains."""


@dataclass(frozen=True)
class Experiment:
    """One row: the model it trains, the objective it trains it with, what it checks before
    a run folder is made (a helper run and its tokenizer), and what its data must hold."""

    name: str
    model: ModelKind
    objective: Callable[[Setup], TrainingObjective]
    check: Callable[[Layout, TrainConfig, ModelPaths], None] = no_check
    check_data: Callable[[list[Example], Path], None] = any_records
    by_task: bool = False  # batches keep a task's records together (pairs for a critic)


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("baseline", POLICY, weighted_mtp(uniform)),
        Experiment(
            "critic",
            VALUE_MODEL,
            lambda setup: ValueObjective(setup.config.critic.objective),
            check_data=require_both_outcomes,
            by_task=True,
        ),
        Experiment("ref-tune", REFERENCE_LM, lambda setup: NextTokenObjective()),
        Experiment("verifiable", POLICY, weighted_mtp(critic_weights), check=check_critic),
        Experiment("rho1", POLICY, weighted_mtp(rho1_selection), check=check_reference),
    )
}
