"""The weighted experiments' sections of a run's configuration (`critic:` and `rho1:` in
config.yaml, `--set critic.beta=0.5`). Their meaning is checked where they are used, by
`AwrSettings` and `Rho1Settings`, before a run folder is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CriticConfig:
    """Stage 1 (`wmtp train critic`): objective and value-head width. Stage 2 (`wmtp train
    verifiable`): the critic run and the advantage/weight hyperparameters."""

    run: str = ""  # the critic's run folder (stage 2)
    objective: Literal["mc", "pairwise"] = "mc"
    head_hidden: int = 256
    gamma: float = 1.0
    lam: float = 0.95
    beta: float = 1.0
    w_min: float = 0.1
    w_max: float = 3.0
    momentum: float = 0.1  # whitening EMA; the first 1/momentum updates average


@dataclass(frozen=True)
class Rho1Config:
    """Stage 2 (`wmtp train rho1`): the reference (a ref-tune run folder or a model) and the
    selection."""

    reference: str = ""
    kappa: float = 0.6
    score: Literal["signed", "absolute"] = "signed"
