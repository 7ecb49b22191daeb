"""`TensorMemory`: live tensor bytes by what they hold, and their peak, checked against
exact counts and against torch's profiler (an independent count, from the allocator's
events) on a real training step."""

from __future__ import annotations

import torch

from weighted_mtp.train.losses import head_scales, normaliser_terms, sequential_backward
from weighted_mtp.train.tensor_memory import (
    ACTIVATIONS,
    FROZEN,
    GRADIENTS,
    LOGITS,
    OPTIMIZER,
    PARAMETERS,
    TensorMemory,
    watch_model,
    watch_optimizer,
)


def test_it_counts_allocations_frees_resizes_and_tags():
    with TensorMemory(vocab_size=100) as memory:
        a = torch.empty(1000)  # 4000 bytes of activations
        b = torch.empty(10, 100)  # 4000 bytes, last dimension the vocab: logits
        view = b.view(-1)  # no new storage
        assert memory.total == 8000 and memory.current[LOGITS] == 4000
        del a
        assert memory.total == 4000 and memory.peak == 8000
        assert memory.at_peak == {**memory.at_peak, ACTIVATIONS: 4000, LOGITS: 4000}
        with memory.scope(FROZEN), memory.scope(OPTIMIZER):  # the frozen helper wins
            c = torch.zeros(25)
        assert memory.current[FROZEN] == 100
        storage = c.untyped_storage()
        storage.resize_(0)  # how FSDP2 frees a gathered parameter
        assert memory.total == 4000
        storage.resize_(5000)
        assert memory.total == 9000 and memory.peak == 9000
        del b, view, c, storage
    assert memory.total == 0


def test_gradients_and_optimizer_state_are_told_apart():
    model = torch.nn.Linear(8, 4, bias=False)  # 128 bytes of weight
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    memory = TensorMemory()
    watch_model(memory, model, PARAMETERS)
    watch_optimizer(memory, optimizer)
    with memory:
        model(torch.ones(2, 8)).sum().backward()
        assert memory.current[GRADIENTS] == 128
        optimizer.step()
        assert memory.current[OPTIMIZER] >= 2 * 128  # exp_avg, exp_avg_sq (and the step)
        optimizer.zero_grad(set_to_none=True)
        assert memory.current[GRADIENTS] == 0 and memory.current[PARAMETERS] == 128


def test_the_peak_of_a_training_step_equals_the_profilers(make_model, tokens_and_mask):
    """torch.profiler's memory timeline follows the CPU allocator's events: its peak over
    one step of the sequential-head trainer is TensorMemory's, to the byte."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    model = make_model(dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens, mask = tokens_and_mask
    scales = head_scales(normaliser_terms(mask, None, 3, "count"))

    def step() -> None:
        sequential_backward(model, tokens, mask, None, scales)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from here on
    options = {"profile_memory": True, "record_shapes": True, "with_stack": True}
    with profile(activities=[ProfilerActivity.CPU], **options) as prof:
        step()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
    profiled = max(sum(categories) for categories in sizes)

    memory = TensorMemory(vocab_size=model.params.vocab_size)
    watch_model(memory, model, PARAMETERS)
    watch_optimizer(memory, optimizer)
    with memory:
        step()
    assert memory.peak == profiled
    assert memory.at_peak[LOGITS] > 0 and memory.at_peak[OPTIMIZER] > 0
