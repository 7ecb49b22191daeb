"""The one trainer: every experiment of `experiments.EXPERIMENTS` is this loop with its row's
model, objective and final writer.

Per optimizer step: this rank's micro-batches of the global batch; the objective's
`prepare` over all of them (weights, global normalisers, pair coefficients); forward and
backward of each micro-batch's share, gradients synchronised across ranks on the last
micro-step only; the loss checked to be finite; clipping; AdamW at the warmup + cosine
learning rate. Validation every `eval_every` steps; checkpoints every `checkpoint_every`
steps and at `stop_at`; at the end the last validation, `final/` and `summary.json`.

Reproducible: the data order is a function of (seed, step), the learning rate of the step,
and the RNG is reseeded from (seed, step, rank) before every step, so a run resumed from a
checkpoint continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weighted_mtp import progress
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import write_json, write_text
from weighted_mtp.storage.layout import Layout, RunFolder
from weighted_mtp.storage.run_folder import claim_run_folder
from weighted_mtp.train import checkpoint as ckpt
from weighted_mtp.train.batches import (
    Batch,
    BatchPlan,
    Example,
    Sharding,
    fixed_batches,
    read_examples,
)
from weighted_mtp.train.config import TrainConfig, config_yaml, validate_for_world
from weighted_mtp.train.distributed import (
    Dist,
    autocast_dtype,
    distributed,
    on_main,
    set_gradient_sync,
)
from weighted_mtp.train.experiments import EXPERIMENTS, Setup
from weighted_mtp.train.loggers import Loggers, open_loggers, require_logger
from weighted_mtp.train.lora import TrainedModel
from weighted_mtp.train.objectives import StepContext, TrainingObjective
from weighted_mtp.train.run_setup import RunInputs, manifest_hashes


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps_done: int
    completed: bool
    final_loss: float | None
    summary: dict[str, Any] = field(default_factory=dict)


def seed_for(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one step on one rank (dropout draws from it)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warmup over `warmup_ratio` of the steps, then cosine down to
    `lr * min_lr_ratio` at the last step."""
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup - 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def require_finite(what: str, value: float | None, step: int) -> None:
    """A NaN or infinite loss stops the run here, before the step's update or `final/`."""
    if value is not None and not math.isfinite(value):
        raise WmtpError(
            f"step {step}: the {what} is {value}; the run stops (no final/ written)",
            hint="lower lr or check the data, then --resume from the last checkpoint "
            "or start again",
        )


def step_autocast(ctx: StepContext) -> AbstractContextManager[Any]:
    """The trainer's autocast on the step's device (disabled in float32)."""
    dtype = ctx.autocast
    return torch.autocast(ctx.dist.device.type, dtype=dtype, enabled=dtype is not None)


def accumulate_gradients(
    objective: TrainingObjective,
    model: TrainedModel,
    batches: list[Batch],
    ctx: StepContext,
) -> tuple[Any, torch.Tensor]:
    """The gradients of one step's loss from this rank's micro-batches: the objective's
    `prepare` over all of them, then each micro-batch's forward and backward, gradients
    synchronised across ranks on the last one only. Returns what `prepare` made and the
    float64 sums of the backward terms on this rank (`wmtp train plan` traces this too)."""
    with step_autocast(ctx):
        prepared = objective.prepare(model, batches, ctx)
    sums: torch.Tensor | None = None
    for i, batch in enumerate(batches):
        set_gradient_sync(model.core, i == len(batches) - 1, ctx.dist)
        with step_autocast(ctx):
            terms = objective.backward(model, batch, i, prepared, ctx)
        sums = terms if sums is None else sums + terms
    assert sums is not None  # a rank holds at least one micro-batch
    return prepared, sums


def make_optimizer(model: TrainedModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trained parameters."""
    return torch.optim.AdamW(
        model.trainable_parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        fused=True,  # one kernel per step: no optimizer-sized temporaries (CPU and CUDA)
    )


def clip_gradients(model: TrainedModel, config: TrainConfig) -> torch.Tensor:
    """Clip the trained parameters' gradients to `clip_grad_norm` (0: none); their norm
    before clipping (a 0-dim tensor)."""
    params = model.trainable_parameters()
    max_norm = config.clip_grad_norm or float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


class Trainer:
    """One run, on one rank. Build it, then `run()`."""

    def __init__(
        self,
        layout: Layout,
        config: TrainConfig,
        inputs: RunInputs,
        run_dir: Path,
        dist_info: Dist,
        make_objective: Callable[[Setup], TrainingObjective] | None = None,
    ) -> None:
        from weighted_mtp.data.tokens import Tokenizer

        experiment = EXPERIMENTS[config.experiment]
        self.layout, self.config, self.inputs = layout, config, inputs
        self.run_dir, self.dist, self.experiment = run_dir, dist_info, experiment
        validate_for_world(config, dist_info.world)
        tokenizer = Tokenizer(inputs.model.tokenizer_model)
        pad_id = tokenizer.sp.eos_id()

        def examples(path: Path) -> list[Example]:
            correct_only = config.correct_only
            return read_examples(path, tokenizer, max_len=config.seq_len, correct_only=correct_only)

        with progress.status("reading and tokenizing the data"):
            train = examples(inputs.train)
            experiment.check_data(train, inputs.train)
            validation = examples(inputs.validation) if inputs.validation is not None else []
        sharding = Sharding(config.batch_size, config.micro_batch_size, dist_info.world)
        self.plan = BatchPlan(train, sharding, config.seed, pad_id, by_task=experiment.by_task)
        self.validation = fixed_batches(validation, config.micro_batch_size, pad_id)
        self.validation = self.validation[: config.eval_batches]  # None: all of them
        with progress.status(f"loading {config.model}"):
            self.model = experiment.model.build(inputs.model, config, dist_info)
        make_objective = make_objective or experiment.objective
        with progress.status(f"preparing the {config.experiment} objective"):  # its helper
            self.objective = make_objective(Setup(layout, config, self.model, dist_info))
        self.total_steps = config.total_steps(self.plan.steps_per_epoch)
        self.autocast = autocast_dtype(config, dist_info.device)
        self.model.core.train()
        self.optimizer = make_optimizer(self.model, config)
        self.step = 0
        self.tokens_seen = 0
        self.wall_s = 0.0
        self.loggers: Loggers | None = None  # rank 0's, opened when the run starts

    # -- one step ------------------------------------------------------------------------

    def _context(self) -> StepContext:
        return StepContext(self.step, self.dist, self.autocast)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step on the global batch; returns its metrics line."""
        config, dev = self.config, self.dist.device
        torch.manual_seed(seed_for(config.seed, self.step, self.dist.rank))
        lr = learning_rate(config, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        batches = [b.to(dev) for b in self.plan.micro_batches(self.step, self.dist.rank)]
        prepared, sums = accumulate_gradients(self.objective, self.model, batches, self._context())
        tokens = torch.tensor(
            [float(sum(b.n_tokens for b in batches))], dtype=torch.float64, device=dev
        )
        stats = self.dist.all_reduce_sum(torch.cat([sums, tokens]))
        record = self.objective.train_record(prepared, stats[:-1])
        require_finite("loss", record["loss"], self.step + 1)
        grad_norm = float(clip_gradients(self.model, self.config))
        require_finite("gradient norm", grad_norm, self.step + 1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens_global = int(stats[-1])
        elapsed = time.perf_counter() - started
        self.step += 1
        self.tokens_seen += tokens_global
        self.wall_s += elapsed
        return {
            "step": self.step,
            "kind": "train",
            **record,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens_global,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": tokens_global / elapsed,
        }

    # -- validation ----------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any] | None:
        """The objective's validation metrics over the validation batches (all ranks)."""
        if not self.validation:
            return None
        with progress.status(f"validating on {len(self.validation)} batch(es)"):
            return self._validate()

    def _validate(self) -> dict[str, Any]:
        world, rank = self.dist.world, self.dist.rank
        mine: list[tuple[int, Any]] = []
        core = self.model.core
        core.eval()
        # Every rank runs the same number of forwards (FSDP's collectives pair up); a rank
        # past the end repeats batch 0 and drops the result.
        for i in range(math.ceil(len(self.validation) / world)):
            index = i * world + rank
            batch = self.validation[index if index < len(self.validation) else 0]
            with step_autocast(self._context()):
                terms = self.objective.validation_terms(self.model, batch.to(self.dist.device))
            if index < len(self.validation):
                mine.append((index, terms))
        core.train()
        gathered = sorted(item for part in self.dist.all_gather_object(mine) for item in part)
        record = self.objective.validation_record([terms for _, terms in gathered])
        require_finite("validation loss", record.get("loss"), self.step)
        return {"step": self.step, "kind": "validation", **record}

    # -- checkpoints and the run ---------------------------------------------------------

    def _state(self) -> ckpt.TrainerState:
        return ckpt.TrainerState(
            self.step, self.total_steps, self.tokens_seen, self.wall_s, self.dist.world
        )

    def save(self) -> Path:
        with progress.status(f"writing the checkpoint of step {self.step}"):
            path = ckpt.save_checkpoint(
                self.run_dir,
                self._state(),
                self.model,
                self.optimizer,
                self.objective.state_dict(),
                self.dist,
            )
            ckpt.prune_checkpoints(self.run_dir, self.config.keep_checkpoints, self.dist)
        return path

    def resume(self) -> None:
        """Continue from the run folder's newest checkpoint that verifies (none: start at
        step 0)."""
        with progress.status("verifying the run's checkpoints"):
            found = ckpt.resume_point(self.run_dir, self.dist)
        if found is None:
            return
        objective_state = self.objective.state_dict()
        with progress.status(f"loading {found.name}"):
            state = ckpt.load_checkpoint(found, self.model, self.optimizer, objective_state)
        self.objective.load_state_dict(objective_state)
        if state.total_steps != self.total_steps:
            raise WmtpError(
                f"the checkpoint planned {state.total_steps} steps, this run {self.total_steps}",
                path=found,
                hint="resume with the run's own --max-steps",
            )
        self.step, self.tokens_seen, self.wall_s = state.step, state.tokens_seen, state.wall_s

    def _log(self, record: dict[str, Any] | None) -> None:
        if record is not None and self.loggers is not None:
            self.loggers.log(record)

    def run(self, stop_at: int | None = None) -> RunResult:
        """Train to the planned end, or to `stop_at` steps as an interruption would."""
        if self.dist.is_main:
            self.loggers = open_loggers(self.config, self.run_dir, self.step)
        try:
            return self._run(stop_at)
        finally:
            if self.loggers is not None:
                self.loggers.close()

    def _run(self, stop_at: int | None) -> RunResult:
        config = self.config
        end = min(self.total_steps, stop_at) if stop_at is not None else self.total_steps
        last_saved = self.step if ckpt.completed_checkpoints(self.run_dir) else -1
        record: dict[str, Any] | None = None
        with progress.task("train", self.total_steps, "steps") as advance:
            advance(self.step)  # a resumed run's bar starts where it stopped
            while self.step < end:
                record = self.train_step()
                self._log(record)
                advance(1, f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s")
                every = config.eval_every
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self._log(self.validate())
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save()
                    last_saved = self.step
        completed = self.step >= self.total_steps
        if last_saved != self.step:
            self.save()
        summary: dict[str, Any] = {}
        if completed:
            validation = self.validate()
            self._log(validation)
            final = RunFolder(self.run_dir).final
            with progress.status(f"writing {final.name}/"):
                self.experiment.model.write_final(
                    final, self.model, self.inputs.model, config, self.dist
                )
            summary = self._summary(record, validation)
        # No rank returns before rank 0 has written the run's last file: what a rank does
        # next (a suite's comparison) may read the run folder.
        self.dist.barrier()
        loss = record["loss"] if record else None
        return RunResult(self.run_dir, self.step, completed, loss, summary)

    def _summary(
        self, last: dict[str, Any] | None, validation: dict[str, Any] | None
    ) -> dict[str, Any]:
        model = self.inputs.model
        files = [model.weights, model.tokenizer_model, self.inputs.train]
        files += [model.params] if model.params.is_file() else [model.hf_config]
        if self.inputs.validation is not None:
            files.append(self.inputs.validation)
        summary = {
            "experiment": self.config.experiment,
            **self.objective.summary(),
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "wall_s": round(self.wall_s, 3),
            "world": self.dist.world,
            "base_model": str(model.root),
            "final_train": last,
            "final_validation": validation,
            "assets": manifest_hashes(self.layout, [f for f in files if f.is_file()]),
        }
        if self.dist.is_main:
            write_json(RunFolder(self.run_dir).summary, summary)
        return summary


def prepare_run_dir(run_dir: Path, config: TrainConfig, dist_info: Dist) -> None:
    """Create the run folder with its config.yaml (rank 0)."""
    if dist_info.is_main:
        folder = RunFolder(run_dir)
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text(folder.config, config_yaml(config))
    dist_info.barrier()


def train(
    layout: Layout,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    make_objective: Callable[[Setup], TrainingObjective] | None = None,
) -> RunResult:
    """Train one run of `config.experiment` on this rank (all ranks of a torchrun call this
    the same way); `make_objective` replaces the experiment's objective (tests)."""
    from weighted_mtp.train.run_setup import new_run_dir, require_verified_model, resolve_inputs

    experiment = EXPERIMENTS[config.experiment]
    # Rank 0 holds the run folder (its lock) until the run ends.
    with ExitStack() as held, distributed() as dist_info:

        def check() -> tuple[RunInputs, Path]:
            inputs = resolve_inputs(layout, config.model, config.data, config.small)
            require_verified_model(layout, inputs)
            experiment.check(layout, config, inputs.model)
            require_logger(config)
            folder = run_dir or new_run_dir(layout, config.experiment, inputs.model.name)
            command = f"wmtp train {config.experiment}"
            claimed = claim_run_folder(
                folder, config.experiment, resume=resume, command=command, layout=layout
            )
            return inputs, held.enter_context(claimed)

        with progress.status("checking the model and the data"):
            inputs, chosen = on_main(dist_info, check)
        prepare_run_dir(chosen, config, dist_info)
        trainer = Trainer(layout, config, inputs, chosen, dist_info, make_objective)
        if resume:
            trainer.resume()
        return trainer.run(stop_at=stop_at)
