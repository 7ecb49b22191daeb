"""Linear layers with oneDNN-packed weights, for decoding on a CPU.

PyTorch's CPU `linear` calls MKL's sgemm, which streams a large weight matrix once for one
row but, on CPUs MKL does not tune for (AMD's among them), costs about as much per extra row
as for the first: 4 rows cost 3.5-4x one row on a 1152 x 32000 matrix. Speculative
decoding's verification pass and batched sampling put several rows through every weight,
so there the weights are read once per row instead of once per pass. oneDNN's matmul on
weights reordered once into its blocked layout (what `torch.compile`'s CPU backend does
when it freezes weights) costs 1.3-1.6x one row for 4 rows. The packed layer replaces the
dense weight (no second copy) and is for inference only: it has no gradient.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKING_BATCH = 4  # the rows oneDNN chooses the blocked layout for (good for 1..32 rows)


class PackedLinear(nn.Module):
    """`nn.Linear` without bias whose weight `[out, in]` is held in oneDNN's layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACKING_BATCH)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)  # [batch * seq, in]
        out: Tensor = torch.ops.mkldnn._linear_pointwise(
            rows, self.packed, None, "none", [None], ""
        )  # [batch * seq, out]
        return out.view(*x.shape[:-1], self.out_features)


@functools.cache
def packing_works() -> bool:
    """This torch build runs oneDNN's packed linear and agrees with `F.linear` on a fixed
    probe, up to float32 rounding (the two sum in different orders: results near zero differ
    by ~1e-7, beyond `allclose`'s default 1e-8)."""
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(16, 8, generator=generator)  # [out, in]
        x = torch.randn(3, 8, generator=generator)  # [rows, in]
        probe = nn.Linear(8, 16, bias=False, device="meta").to_empty(device="cpu")  # no RNG
        with torch.no_grad():
            probe.weight.copy_(weight)
        with torch.inference_mode():
            packed = PackedLinear(probe)(x)
        return bool(torch.allclose(packed, F.linear(x, weight), rtol=1e-5, atol=1e-5))
    except (RuntimeError, AttributeError):  # no oneDNN, or no such op in this build
        return False


def pack_linear_layers(model: nn.Module) -> int:
    """Replace every bias-free float32 CPU `nn.Linear` of `model` by a `PackedLinear`, in
    place, where oneDNN packing works; returns how many were replaced (0: left as it was)."""
    if not packing_works():
        return 0
    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and _packable(child):
                targets.append((parent, name, child))
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)


def _packable(linear: nn.Linear) -> bool:
    """A plain bias-free float32 CPU layer (subclasses may compute something else)."""
    weight = linear.weight
    return (
        type(linear) is nn.Linear
        and linear.bias is None
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
    )


@functools.cache
def batch_invariant() -> bool:
    """Packed layers give each row of a product of 2..33 rows the same bits, whatever the
    other rows are, on a probe as wide as a model's (oneDNN's kernels for one row sum in
    another order, so one row is not included: a caller runs it twice). What makes batched
    decoding reproduce one-row decoding exactly; checked on this machine, as kernels
    differ between CPUs."""
    if not packing_works():
        return False
    generator = torch.Generator().manual_seed(0)
    probe = nn.Linear(1024, 96, bias=False, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        probe.weight.copy_(torch.randn(96, 1024, generator=generator))
    x = torch.randn(33, 1024, generator=generator)  # [rows, in]
    with torch.inference_mode():
        packed = PackedLinear(probe)
        alone = torch.cat([packed(x[i : i + 1].expand(2, -1))[:1] for i in range(33)])
        return all(torch.equal(packed(x[:rows]), alone[:rows]) for rows in range(2, 34))


def fully_packed(model: nn.Module) -> bool:
    """Every linear layer of `model` is packed (and there is at least one)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | PackedLinear)]
    return bool(layers) and all(isinstance(m, PackedLinear) for m in layers)
