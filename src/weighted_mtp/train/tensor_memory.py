"""Live tensor memory of one rank, by what it holds, and its peak.

`TensorMemory` is a `TorchDispatchMode`: it sees every tensor an operation creates, follows
each storage until it is freed (a weak reference) or resized (FSDP2 frees and re-allocates
gathered parameters with `UntypedStorage.resize_`, patched while the mode is on), and keeps
the total of live bytes and its peak. This is the "measured peak" of a step: the bytes of
tensor storages alive at once on the rank, what CUDA's `max_memory_allocated` reports on a
GPU minus its 512-byte rounding, and it works the same on real tensors and on the fake ones
of a memory plan (`train.memory_plan`).

Every storage is tagged with what it holds; the split at the peak is the tags' totals at
that moment:

- `parameters`: the model's parameters (FSDP2 shards, and the parameters a unit gathers
  for its forward and backward, with their all-gather buffers);
- `gradients`: parameters' gradients (whole, sharded after the reduce-scatter, or
  accumulated unsharded across micro-batches), with the reduce-scatter buffers;
- `optimizer state`: what the optimizer allocates (AdamW's moments, and its step's
  temporaries);
- `logits`: tensors whose last dimension is the vocabulary (logits, their float32 copies,
  log-probabilities and their gradients);
- `frozen helper`: the frozen critic's or reference's parameters and everything its
  scoring forward allocates;
- `value head`: what a trained value model's head allocates in its forward (its hidden
  layer and the value logits; a critic has no vocabulary-sized tensors);
- `activations`: everything else (the forward's saved tensors, the backward's
  temporaries).

Where FSDP2 gathers and reduces is found by wrapping its `FSDPParamGroup` methods
(`unshard`, `wait_for_unshard`, `post_backward`, `finalize_backward`) while the mode is on:
private torch API, checked when the mode starts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

PARAMETERS = "parameters"
GRADIENTS = "gradients"
OPTIMIZER = "optimizer state"
ACTIVATIONS = "activations"
LOGITS = "logits"
FROZEN = "frozen helper"
VALUE_HEAD = "value head"
CATEGORIES = (PARAMETERS, GRADIENTS, OPTIMIZER, ACTIVATIONS, LOGITS, FROZEN, VALUE_HEAD)
# FSDPParamGroup methods that allocate, and what they allocate.
FSDP_SCOPES = {
    "unshard": PARAMETERS,
    "wait_for_unshard": PARAMETERS,
    "post_backward": GRADIENTS,
    "finalize_backward": GRADIENTS,
}


@dataclass
class _Storage:
    """One live storage: its current size and tag."""

    nbytes: int
    category: str


def storages(tensor: Tensor) -> list[torch.UntypedStorage]:
    """The storages holding `tensor`'s data (a DTensor's local tensor's, for a wrapper)."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = (getattr(tensor, name) for name in names)  # a DTensor's mesh is one too
        return [st for t in inner if isinstance(t, Tensor) for st in storages(t)]
    return [tensor.untyped_storage()]


class TensorMemory(TorchDispatchMode):
    """Bytes of live tensor storages by category, and the peak (see the module doc).

    `vocab_size` tells logits-sized tensors apart. Tensors created before the mode is on
    count once registered (`watch`)."""

    def __init__(self, vocab_size: int | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.vocab_size = vocab_size
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.peak = 0
        self.at_peak = dict(self.current)
        self._storages: Any = WeakIdKeyDictionary()  # storage -> _Storage
        self._refs: set[weakref.ref[torch.UntypedStorage]] = set()
        self._scopes: list[str] = []
        self._hooked: Any = WeakIdKeyDictionary()  # parameter -> its hook's handle
        self._undo: list[Callable[[], None]] = []

    # -- counting --------------------------------------------------------------------------

    def _add(self, record: _Storage, nbytes: int) -> None:
        self.current[record.category] += nbytes
        self.total += nbytes
        if self.total > self.peak:
            self.peak = self.total
            self.at_peak = dict(self.current)

    def track(self, tensor: Tensor, category: str, *, retag: bool = False) -> None:
        """Count `tensor`'s storages under `category` (a storage already counted keeps its
        tag unless `retag`)."""
        for storage in storages(tensor):
            record = self._storages.get(storage)
            if record is None:
                record = _Storage(0, category)
                self._storages[storage] = record
                self._refs.add(weakref.ref(storage, self._freed(record)))
                self._add(record, storage.nbytes())
                record.nbytes = storage.nbytes()
            elif retag and record.category != category:
                self.current[record.category] -= record.nbytes
                self.current[category] += record.nbytes
                record.category = category

    def _freed(self, record: _Storage) -> Callable[[weakref.ref[Any]], None]:
        def free(ref: weakref.ref[Any]) -> None:
            self._add(record, -record.nbytes)
            record.nbytes = 0
            self._refs.discard(ref)

        return free

    def _resized(self, storage: torch.UntypedStorage) -> None:
        record = self._storages.get(storage)
        if record is not None and record.nbytes != storage.nbytes():
            change = storage.nbytes() - record.nbytes
            record.nbytes = storage.nbytes()
            self._add(record, change)

    # -- tags ------------------------------------------------------------------------------

    @contextmanager
    def scope(self, category: str) -> Iterator[None]:
        """Tag what is allocated inside with `category` (the frozen helper wins over any
        scope opened inside it)."""
        self._scopes.append(category)
        try:
            yield
        finally:
            self._scopes.pop()

    def _category(self, tensor: Tensor) -> str:
        if FROZEN in self._scopes:
            return FROZEN
        if self._scopes:
            return self._scopes[-1]
        if self.vocab_size and tensor.dim() >= 2 and tensor.shape[-1] == self.vocab_size:
            return LOGITS
        return ACTIVATIONS

    def watch(self, tensors: Iterable[Tensor], category: str) -> None:
        """Count tensors that exist already (a model's parameters) under `category`."""
        for tensor in tensors:
            self.track(tensor.detach(), category, retag=True)

    def watch_gradients(self, parameters: Iterable[Tensor]) -> None:
        """Tag the gradients autograd computes for `parameters` as they arrive."""
        for parameter in parameters:
            if parameter.requires_grad and parameter not in self._hooked:
                handle = cast("Any", parameter).register_hook(self._gradient)
                self._hooked[parameter] = handle
                self._undo.append(handle.remove)

    def tag_forward(self, module: nn.Module, category: str) -> None:
        """Tag what `module`'s forward allocates with `category` (a frozen helper's scoring
        forward), FSDP2's gathers included: the scope opens before its pre-forward hook."""

        def enter(*_: Any) -> None:
            self._scopes.append(category)

        def leave(*_: Any) -> None:
            self._scopes.pop()

        self._undo.append(module.register_forward_pre_hook(enter, prepend=True).remove)
        self._undo.append(module.register_forward_hook(leave, always_call=True).remove)

    def on_exit(self, undo: Callable[[], None]) -> None:
        """Call `undo` when the mode ends (hooks to remove)."""
        self._undo.append(undo)

    def _gradient(self, grad: Tensor) -> None:
        self.track(grad, GRADIENTS, retag=True)

    # -- the mode --------------------------------------------------------------------------

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.track(leaf, self._category(leaf))
        return out

    def __enter__(self) -> TensorMemory:
        self._patch_resize()
        self._patch_fsdp()
        super().__enter__()  # type: ignore[no-untyped-call,unused-ignore]
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)  # type: ignore[no-untyped-call,unused-ignore]
        while self._undo:
            self._undo.pop()()

    def _patch_resize(self) -> None:
        original = torch.UntypedStorage.resize_

        @wraps(original)
        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            result = original(storage, size)
            self._resized(storage)
            return result

        setattr(torch.UntypedStorage, "resize_", resize_)  # noqa: B010 (a method, patched)
        self._undo.append(_restorer(torch.UntypedStorage, "resize_", original))

    def _patch_fsdp(self) -> None:
        from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

        for name, category in FSDP_SCOPES.items():
            original = getattr(FSDPParamGroup, name, None)
            if original is None:
                raise RuntimeError(f"FSDP2 has no FSDPParamGroup.{name}: update TensorMemory")
            setattr(FSDPParamGroup, name, self._scoped(original, category))
            self._undo.append(_restorer(FSDPParamGroup, name, original))

    def _scoped(self, method: Callable[..., Any], category: str) -> Callable[..., Any]:
        @wraps(method)
        def scoped(group: Any, *args: Any, **kwargs: Any) -> Any:
            with self.scope(category):
                result = method(group, *args, **kwargs)
            if method.__name__ == "wait_for_unshard":
                # autograd accumulates into the gathered parameters: tag what it computes
                self.watch_gradients(p.unsharded_param for p in group.fsdp_params)
            return result

        return scoped


def _restorer(owner: type, name: str, original: Any) -> Callable[[], None]:
    return lambda: setattr(owner, name, original)


def watch_model(memory: TensorMemory, module: nn.Module, category: str) -> None:
    """Count a built model's parameters and buffers, and tag its gradients."""
    memory.watch(module.parameters(), category)
    memory.watch(module.buffers(), category)
    memory.watch_gradients(module.parameters())


def watch_frozen(memory: TensorMemory, module: nn.Module) -> None:
    """Count a frozen helper's tensors and what its forwards allocate as the helper's."""
    watch_model(memory, module, FROZEN)
    memory.tag_forward(module, FROZEN)


def watch_optimizer(memory: TensorMemory, optimizer: torch.optim.Optimizer) -> None:
    """Count the optimizer's state, and tag what its `step()` allocates as its state."""
    memory.watch(
        (v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)),
        OPTIMIZER,
    )
    scopes: list[AbstractContextManager[None]] = []

    def enter(*_: Any) -> None:
        scopes.append(memory.scope(OPTIMIZER))
        scopes[-1].__enter__()

    def leave(*_: Any) -> None:
        scopes.pop().__exit__(None, None, None)

    memory.on_exit(optimizer.register_step_pre_hook(enter).remove)
    memory.on_exit(optimizer.register_step_post_hook(leave).remove)
