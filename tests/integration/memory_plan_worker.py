"""Worker for test_memory_plan: `python memory_plan_worker.py RANK WORLD RENDEZVOUS STORAGE
CASES OUT` measures the peak tensor memory of real training steps on this rank.

For each case (an experiment and its `--set` overrides, JSON), the one trainer is built as
`wmtp train` builds it (`build_config`, `Trainer` with the experiment's model and objective,
a policy run's frozen helper included) on the storage's micro models; its data plan hands
out full-length micro-batches (`micro_batch_size` rows of `seq_len` tokens, as the plan
assumes), and two `train_step`s run under `TensorMemory` (`step_memory`, as the plan
counts), which counts the trained model's and the frozen helper's tensors and everything
the steps allocate. The measured peak of each case goes to OUT."""

from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from weighted_mtp.storage.layout import Layout
from weighted_mtp.train.config import Setting, TrainConfig, build_config
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.memory_plan import full_batch, run_models, step_memory
from weighted_mtp.train.run_setup import resolve_inputs
from weighted_mtp.train.tensor_memory import watch_optimizer
from weighted_mtp.train.trainer import Trainer


def micro_config(experiment: str, overrides: dict) -> TrainConfig:
    """The run's config as `wmtp train EXPERIMENT --small --set k=v ...` builds it."""
    settings = [Setting(key, value) for key, value in overrides.items()]
    return build_config(experiment, small=True, settings=settings)


def measured_peak(layout: Layout, experiment: str, overrides: dict, dist_info: Dist) -> dict:
    config = micro_config(experiment, overrides)
    assets = resolve_inputs(layout, config.model, config.data, config.small)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(layout, config, assets, Path(run_dir), dist_info)
        vocab = run_models(layout, config).architecture.vocab_size
        rows, tokens = config.micro_batch_size, config.seq_len
        accumulation = trainer.plan.sharding.accumulation

        def full_length(step: int, rank: int) -> list:
            return [full_batch(rows, tokens, vocab, dist_info.device) for _ in range(accumulation)]

        trainer.plan.micro_batches = full_length  # type: ignore[method-assign]
        gc.collect()
        weighting = getattr(trainer.objective, "weighting", None)
        helper = getattr(weighting, "reference", None) or getattr(weighting, "critic", None)
        memory = step_memory(trainer.model.core, vocab, helper)
        watch_optimizer(memory, trainer.optimizer)
        with memory:
            trainer.train_step()
            trainer.train_step()
        return {"peak": memory.peak, "split": memory.at_peak}


def main(rank: int, world: int, rendezvous: str, storage: str, cases: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world
        )
    try:
        layout = Layout(Path(storage))
        dist_info = Dist(rank, world, torch.device("cpu"))
        results = {
            name: measured_peak(layout, experiment, overrides, dist_info)
            for name, (experiment, overrides) in json.loads(cases).items()
        }
        Path(out).write_text(json.dumps(results))
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7])
