"""Models: upstream download, streaming conversion, the MTP adapter, micro models, verify.

The public API is importable from here: `from weighted_mtp.models import load_mtp_model,
load_reference_model, mtp_loss`. The names resolve on first use (PEP 562), so importing the
package, or `wmtp --help`, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weighted_mtp.models.adapter import load_mtp_model, load_reference_model, mtp_loss

_PUBLIC = {
    "load_mtp_model": "weighted_mtp.models.adapter",
    "load_reference_model": "weighted_mtp.models.adapter",
    "mtp_loss": "weighted_mtp.models.adapter",
}
__all__ = ["load_mtp_model", "load_reference_model", "mtp_loss"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
