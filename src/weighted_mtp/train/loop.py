"""The one trainer: every experiment is this loop with a different `Weighting`.

Per optimizer step: the global batch's micro-batches for this rank; the weighting's
weights for each; the global normaliser (summed over micro-batches, all-reduced over ranks);
then forward and backward of each micro-batch's share (the sequential-head backward, or all
heads at once with `naive_heads`), gradients synchronised on the last micro-step only;
clipping; AdamW at the warmup + cosine learning rate. Validation loss per head every
`eval_every` steps; checkpoints every `checkpoint_every` steps and at `stop_at`.

Reproducible: the data order is a function of (seed, step), the learning rate of the step,
and the RNG is reseeded from (seed, step, rank) before every step, so a run resumed from a
checkpoint continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import write_json, write_text
from weighted_mtp.storage.layout import Layout, RunFolder
from weighted_mtp.train import checkpoint as ckpt
from weighted_mtp.train.config import TrainConfig, config_yaml
from weighted_mtp.train.data import Batch, BatchPlan, Sharding, fixed_batches, read_examples
from weighted_mtp.train.distributed import Dist, bf16_supported, set_gradient_sync, shard
from weighted_mtp.train.lora import Policy, apply_lora
from weighted_mtp.train.losses import (
    head_loss_sum,
    head_scales,
    naive_backward,
    normaliser_terms,
    sequential_backward,
)
from weighted_mtp.train.runs import Assets, MetricsLog, manifest_hashes
from weighted_mtp.train.weighting import Baseline, StepWeighting, WeighContext, Weighting


@dataclass(frozen=True)
class StepReport:
    """What the progress display shows after each step."""

    step: int
    total_steps: int
    loss: float
    tokens_per_s: float


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps_done: int
    completed: bool
    final_loss: float | None
    summary: dict[str, Any] = field(default_factory=dict)


def seed_for(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one step on one rank (LoRA dropout draws from it)."""
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


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device supports it (precision auto|bf16), else float32."""
    if config.precision == "fp32":
        return None
    if bf16_supported(device):
        return torch.bfloat16
    if config.precision == "bf16":
        raise WmtpError(
            f"precision bf16 is not supported on {device}", hint="use --set precision=auto"
        )
    return None


class Trainer:
    """One run, on one rank. Build it, then `run()`."""

    def __init__(
        self,
        layout: Layout,
        config: TrainConfig,
        assets: Assets,
        run_dir: Path,
        dist_info: Dist,
        weighting: Weighting | None = None,
    ) -> None:
        from weighted_mtp.data.tokens import Tokenizer
        from weighted_mtp.models.adapter import load_mtp_model

        self.layout, self.config, self.assets, self.run_dir, self.dist = (
            layout,
            config,
            assets,
            run_dir,
            dist_info,
        )
        self.weighting = weighting or Baseline(normalize=config.normalize)
        model = load_mtp_model(assets.model.root, dtype=torch.float32)
        params = model.params
        if config.seq_len > params.max_seq_len:
            raise WmtpError(
                f"seq_len {config.seq_len} is longer than the model's context {params.max_seq_len}",
                path=assets.model.params,
                hint=f"use --set seq_len={params.max_seq_len} or less",
            )
        if config.n_future > params.n_future_tokens:
            raise WmtpError(
                f"n_future {config.n_future} exceeds the model's {params.n_future_tokens} heads",
                hint=f"use --n-future 1..{params.n_future_tokens}",
            )
        self.n_heads = config.n_future or params.n_future_tokens
        tokenizer = Tokenizer(assets.model.tokenizer_model)
        self.pad_id = tokenizer.sp.eos_id()
        train = read_examples(
            assets.train, tokenizer, max_len=config.seq_len, correct_only=config.correct_only
        )
        self.plan = BatchPlan(
            train,
            Sharding(config.batch_size, config.micro_batch_size, dist_info.world),
            config.seed,
            self.pad_id,
        )
        validation = (
            read_examples(
                assets.validation,
                tokenizer,
                max_len=config.seq_len,
                correct_only=config.correct_only,
            )
            if assets.validation is not None
            else []
        )
        self.validation = fixed_batches(validation, config.micro_batch_size, self.pad_id)
        if config.eval_batches:
            self.validation = self.validation[: config.eval_batches]
        self.total_steps = config.max_steps or config.epochs * self.plan.steps_per_epoch
        self.autocast = autocast_dtype(config, dist_info.device)
        self.policy: Policy = apply_lora(model, config.lora, config.seed)
        self.policy.core.to(dist_info.device)
        if dist_info.sharded:
            shard(self.policy.core, low_precision=self.autocast is not None)
        self.policy.core.train()
        self.optimizer = torch.optim.AdamW(
            self.policy.trainable_parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
            fused=True,  # one kernel per step: no optimizer-sized temporaries (CPU and CUDA)
        )
        self.step = 0
        self.tokens_seen = 0
        self.wall_s = 0.0
        self.metrics = MetricsLog(RunFolder(run_dir).metrics)

    # -- one step ------------------------------------------------------------------------

    def _autocast(self):
        dtype = self.autocast
        return torch.autocast(self.dist.device.type, dtype=dtype, enabled=dtype is not None)

    def _weigh(self, batches: list[Batch]):
        ctx = WeighContext(
            self.policy.core,
            self.step,
            self.n_heads,
            self.dist.device,
            self.dist.all_reduce_sum,
            self.autocast,
        )
        if isinstance(self.weighting, StepWeighting):
            return self.weighting.weigh_step(batches, ctx)
        return [self.weighting.weigh(batch, ctx) for batch in batches]

    def train_step(self) -> dict[str, Any]:
        """One optimizer step on the global batch; returns its metrics line."""
        config, dev = self.config, self.dist.device
        torch.manual_seed(seed_for(config.seed, self.step, self.dist.rank))
        lr = learning_rate(config, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        batches = [b.to(dev) for b in self.plan.micro_batches(self.step, self.dist.rank)]
        weights = self._weigh(batches)
        normaliser = torch.zeros(self.n_heads, dtype=torch.float64, device=dev)
        for batch, w in zip(batches, weights, strict=True):
            normaliser += normaliser_terms(
                batch.loss_mask, w.values, self.n_heads, self.weighting.normalize
            )
        self.dist.all_reduce_sum(normaliser)
        scales = head_scales(normaliser)
        backward = naive_backward if config.naive_heads else sequential_backward
        # Each rank's loss is a share of the global sum; FSDP2 averages gradients over the
        # ranks, so scale by the rank count to make them sum (clipping sees 1 rank's norm).
        grad_scales = scales * self.dist.world
        sums = torch.zeros(self.n_heads, dtype=torch.float64, device=dev)
        for i, (batch, w) in enumerate(zip(batches, weights, strict=True)):
            set_gradient_sync(self.policy.core, i == len(batches) - 1, self.dist)
            with self._autocast():
                sums += backward(
                    self.policy.core, batch.tokens, batch.loss_mask, w.values, grad_scales
                ).double()
        grad_norm = self._clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = torch.tensor(
            [float(sum(b.n_tokens for b in batches))], dtype=torch.float64, device=dev
        )
        stats = torch.cat([sums, tokens, self._weight_metrics(weights)])
        self.dist.all_reduce_sum(stats)
        sums, tokens_global = stats[: self.n_heads], int(stats[self.n_heads])
        per_head = torch.where(normaliser > 0, sums / normaliser.clamp(min=1e-30), 0.0)
        loss = float((sums * scales).sum())
        elapsed = time.perf_counter() - started
        self.step += 1
        self.tokens_seen += tokens_global
        self.wall_s += elapsed
        record = {
            "step": self.step,
            "kind": "train",
            "loss": loss,
            "per_head": [float(x) for x in per_head],
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens_global,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": tokens_global / elapsed,
            "normalize": self.weighting.normalize,
        }
        if self._metric_names:
            averaged = stats[self.n_heads + 1 :] / (len(batches) * self.dist.world)
            record["weights"] = dict(
                zip(self._metric_names, (float(x) for x in averaged), strict=True)
            )
        return record

    _metric_names: tuple[str, ...] = ()

    def _weight_metrics(self, weights) -> torch.Tensor:
        """The weighting's metrics summed over micro-batches (averaged after the all-reduce)."""
        names = sorted(weights[0].metrics) if weights else []
        self._metric_names = tuple(names)
        total = torch.zeros(len(names), dtype=torch.float64, device=self.dist.device)
        for w in weights:
            values = [w.metrics.get(n, 0.0) for n in names]
            total += torch.tensor(values, dtype=torch.float64, device=self.dist.device)
        return total

    def _clip(self) -> float:
        params = self.policy.trainable_parameters()
        max_norm = self.config.clip_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm)

    # -- validation ----------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any] | None:
        """Count-normalised loss per head over the validation batches (all ranks)."""
        if not self.validation:
            return None
        core, dev = self.policy.core, self.dist.device
        per_rank = math.ceil(len(self.validation) / self.dist.world)
        sums = torch.zeros(2, self.n_heads, dtype=torch.float64, device=dev)
        core.eval()
        for i in range(per_rank):
            index = i * self.dist.world + self.dist.rank
            # Every rank runs the same number of forwards (FSDP collectives); a rank past the
            # end repeats batch 0 with no targets.
            batch = self.validation[index if index < len(self.validation) else 0].to(dev)
            mask = (
                batch.loss_mask
                if index < len(self.validation)
                else torch.zeros_like(batch.loss_mask)
            )
            with self._autocast():
                h, cos, sin = core.trunk(batch.tokens)
                for k in range(self.n_heads):
                    logits = core.head_logits(h, k, cos, sin)
                    sums[0, k] += head_loss_sum(logits, batch.tokens, mask, None, k).double()
            sums[1] += normaliser_terms(mask, None, self.n_heads, "count")
        core.train()
        self.dist.all_reduce_sum(sums)
        per_head = sums[0] / sums[1].clamp(min=1)
        active = sums[1] > 0
        return {
            "step": self.step,
            "kind": "validation",
            "loss": float(per_head[active].mean()) if active.any() else None,
            "per_head": [float(x) for x in per_head],
            "targets": int(sums[1, 0]),
        }

    # -- checkpoints and the run ---------------------------------------------------------

    def _state(self) -> ckpt.TrainerState:
        return ckpt.TrainerState(
            self.step, self.total_steps, self.tokens_seen, self.wall_s, self.dist.world
        )

    def save(self) -> Path:
        path = ckpt.save_checkpoint(
            self.run_dir,
            self._state(),
            self.policy,
            self.optimizer,
            self.weighting.state_dict(),
            self.dist,
        )
        ckpt.prune_checkpoints(self.run_dir, self.config.keep_checkpoints, self.dist)
        return path

    def resume(self) -> None:
        """Continue from the run folder's latest checkpoint (none: start at step 0)."""
        found = ckpt.completed_checkpoints(self.run_dir)
        if not found:
            return
        weighting_state = self.weighting.state_dict()
        state = ckpt.load_checkpoint(found[-1], self.policy, self.optimizer, weighting_state)
        self.weighting.load_state_dict(weighting_state)
        if state.total_steps != self.total_steps:
            raise WmtpError(
                f"the checkpoint planned {state.total_steps} steps, this run {self.total_steps}",
                path=found[-1],
                hint="resume with the run's own --max-steps",
            )
        self.step, self.tokens_seen, self.wall_s = state.step, state.tokens_seen, state.wall_s
        if self.dist.is_main:
            self.metrics.rewind(self.step)

    def run(
        self, stop_at: int | None = None, on_step: Callable[[StepReport], None] | None = None
    ) -> RunResult:
        """Train to the planned end, or to `stop_at` steps as an interruption would."""
        config = self.config
        end = min(self.total_steps, stop_at) if stop_at is not None else self.total_steps
        last_saved = self.step if ckpt.completed_checkpoints(self.run_dir) else -1
        record: dict[str, Any] | None = None
        while self.step < end:
            record = self.train_step()
            if self.dist.is_main:
                self.metrics.append(record)
                if on_step is not None:
                    on_step(
                        StepReport(
                            self.step, self.total_steps, record["loss"], record["tokens_per_s"]
                        )
                    )
            if (
                config.eval_every
                and self.step % config.eval_every == 0
                and self.step < self.total_steps
            ):
                self._log_validation()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save()
                last_saved = self.step
        completed = self.step >= self.total_steps
        if last_saved != self.step:
            self.save()
        summary: dict[str, Any] = {}
        if completed:
            validation = self._log_validation()
            self.save_final()
            summary = self._summary(record, validation)
        return RunResult(
            self.run_dir, self.step, completed, record["loss"] if record else None, summary
        )

    def _log_validation(self) -> dict[str, Any] | None:
        result = self.validate()
        if result is not None and self.dist.is_main:
            self.metrics.append(result)
        return result

    def save_final(self) -> None:
        """`final/`: the trained weights (full, merged LoRA or the adapter alone)."""
        from weighted_mtp.train.final import save_final

        final = RunFolder(self.run_dir).final
        save_final(final, self.policy, self.assets.model, self.config, self.dist)

    def _summary(
        self, last: dict[str, Any] | None, validation: dict[str, Any] | None
    ) -> dict[str, Any]:
        model = self.assets.model
        files = [model.weights, model.tokenizer_model, model.params, self.assets.train]
        if self.assets.validation is not None:
            files.append(self.assets.validation)
        summary = {
            "experiment": self.config.experiment,
            "weighting": self.weighting.name,
            "normalize": self.weighting.normalize,
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "wall_s": round(self.wall_s, 3),
            "world": self.dist.world,
            "final_train": last,
            "final_validation": validation,
            "assets": manifest_hashes(self.layout, [f for f in files if f.is_file()]),
        }
        placement = getattr(self.weighting, "placement", None)  # a frozen helper's
        if placement is not None:
            summary["frozen"] = placement.as_record()
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


def _everywhere(dist_info: Dist, work: Callable[[], Any]) -> Any:
    """Run `work` on rank 0 and hand its result, or its WmtpError, to every rank."""
    outcome: tuple[Any, str | None] = (None, None)
    if dist_info.is_main:
        try:
            outcome = (work(), None)
        except WmtpError as exc:
            outcome = (None, exc.line())
    result, error = dist_info.broadcast_object(outcome)
    if error is not None:
        raise WmtpError(error)
    return result


def train(
    layout: Layout,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    weighting: Weighting | None = None,
) -> RunResult:
    """Train one run on this rank (all ranks of a torchrun call this the same way)."""
    from weighted_mtp.train.distributed import close_distributed, init_distributed
    from weighted_mtp.train.runs import new_run_dir, require_verified_model, resolve_assets

    config.validate("config")
    dist_info = init_distributed()
    try:
        if run_dir is not None and not resume and RunFolder(run_dir).config.exists():
            raise WmtpError(
                "the run folder already holds a run",
                path=run_dir,
                hint="add --resume or choose a new --out",
            )

        def check_assets() -> tuple[Assets, Path]:
            assets = resolve_assets(layout, config.model, config.data, config.small)
            require_verified_model(layout, assets)
            return assets, run_dir or new_run_dir(layout, config.experiment, assets.model.name)

        assets, chosen = _everywhere(dist_info, check_assets)
        prepare_run_dir(chosen, config, dist_info)
        trainer = Trainer(layout, config, assets, chosen, dist_info, weighting)
        if resume:
            trainer.resume()
        return trainer.run(stop_at=stop_at, on_step=on_step)
    finally:
        close_distributed()
