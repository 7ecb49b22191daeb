"""Frozen helper models (the critic, the Rho-1 reference): eval mode, no gradient, ever."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and `requires_grad=False` on every parameter; returns `module`."""
    module.eval()
    module.requires_grad_(False)
    return module


@contextmanager
def scoring_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradient; every submodule's mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
