"""Stage 1 of the weighted experiments: the models they weigh with.

- `critic`: a value model (`critic.ValueModel` on the reference's backbone) trained on the
  correct and incorrect solutions of the training split with the `mc` or `pairwise`
  objective; validation reports pairwise accuracy and AUROC of the mean value.
- `ref-tune`: the reference model fine-tuned with next-token loss on the correct training
  solutions (or `--data`), the Rho-1 reference.

Both are small next to the policy run and train in one process: under torchrun the first
rank alone, with no process group, while the other ranks end at once. Records are grouped
by task and tasks shuffled by the seed, so a pairwise batch holds both sides of its pairs;
each micro-batch's loss is its share of the step's (records for `mc`/`ref-tune` tokens,
pairs for `pairwise`). The run folder holds
`config.yaml`, `metrics.jsonl`, `checkpoints/step-N/` (the policy trainer's atomic DCP
checkpoints, every `checkpoint_every` steps and where `--stop-at` stops; `--resume` continues
exactly: the data order is a function of (seed, step), the RNG is reseeded per step),
`summary.json` and `final/` (written under a temporary name and renamed when complete) with
`stage.json`: what it is, its base model and the SHA-256 of its tokenizer, which stage 2
checks against the policy's. A tuned reference is saved in its source's dtype, so the
copied `config.json` (`torch_dtype`) states the truth.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER, read_json_or_none, write_json, write_text
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.layout import Layout, ModelPaths, RunFolder
from weighted_mtp.train import checkpoint as ckpt
from weighted_mtp.train.config import TrainConfig, config_yaml
from weighted_mtp.train.critic import (
    CriticLora,
    ValueModel,
    add_lora,
    auroc,
    correct_incorrect_pairs,
    critic_loss,
    critic_values,
    pairwise_accuracy,
    response_mean,
)
from weighted_mtp.train.data import Batch, Example, collate, read_examples
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.frozen import scoring_mode
from weighted_mtp.train.loop import StepReport, autocast_dtype, learning_rate, seed_for
from weighted_mtp.train.rho1 import target_cross_entropy
from weighted_mtp.train.runs import Assets, MetricsLog

STAGE_FILE = "stage.json"
CRITIC_WEIGHTS = "critic.safetensors"
META_TO_HF = {
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
}


@dataclass(frozen=True)
class StageResult:
    run_dir: Path
    steps: int
    completed: bool
    summary: dict[str, Any]


@dataclass(frozen=True)
class StageModel:
    """A stage-1 model as `checkpoint` saves it: with LoRA only the trainable tensors (the
    adapters and the critic's value head), the base being the model asset."""

    core: nn.Module
    frozen_base: bool

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.core.parameters() if p.requires_grad]


def task_grouped_batches(examples: list[Example], size: int, seed: int) -> list[list[Example]]:
    """Tasks in a seeded order, each task's records together, cut into batches of `size`
    (the remainder that does not fill a batch is left out, as in the policy's plan)."""
    by_task: dict[str, list[Example]] = {}
    for example in examples:
        by_task.setdefault(example.task_id, []).append(example)
    tasks = sorted(by_task)
    random.Random(seed).shuffle(tasks)
    ordered = [e for task in tasks for e in by_task[task]]
    return [ordered[i : i + size] for i in range(0, len(ordered) - size + 1, size)]


def require_both_outcomes(examples: list[Example], path: Path) -> None:
    correct = sum(e.is_correct for e in examples)
    if correct == 0 or correct == len(examples):
        which = "incorrect" if correct else "correct"
        raise WmtpError(
            f"the critic needs correct and incorrect solutions, this dataset has no {which} ones",
            path=path,
            hint="train the critic on a split with both (metadata.is_correct true and false)",
        )


def hf_lora(config: TrainConfig) -> CriticLora | None:
    """The run's LoRA settings for a Hugging Face Llama backbone (Meta names mapped)."""
    if not config.lora.enabled:
        return None
    targets = tuple(META_TO_HF.get(t, t) for t in config.lora.targets)
    return CriticLora(config.lora.r, config.lora.alpha, config.lora.dropout, targets)


def build_critic(backbone_dir: Path, config: TrainConfig) -> ValueModel:
    from weighted_mtp.models.adapter import load_reference_model

    backbone = load_reference_model(backbone_dir).model  # LlamaModel, no LM head
    lora = hf_lora(config)
    if lora is not None:
        backbone = add_lora(backbone, lora)
    return ValueModel(backbone, config.critic.head_hidden)


def build_ref_model(model_dir: Path, config: TrainConfig) -> nn.Module:
    from weighted_mtp.models.adapter import load_reference_model

    model: nn.Module = load_reference_model(model_dir)
    lora = hf_lora(config)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
        )
        model = get_peft_model(model, peft_config)
    return model


def next_token_sum(model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
    """Sum of next-token CE over the batch's targets, and their number."""
    ce = target_cross_entropy(model(batch.tokens).logits, batch.tokens)  # [B, S]
    return (ce * batch.loss_mask).sum(), int(batch.loss_mask.sum())


class StageOne:
    """One critic or ref-tune run in this process."""

    def __init__(
        self,
        kind: str,
        config: TrainConfig,
        assets: Assets,
        run_dir: Path,
        device: torch.device,
    ) -> None:
        from weighted_mtp.data.tokens import Tokenizer

        self.kind, self.config, self.assets, self.run_dir = kind, config, assets, run_dir
        tokenizer = Tokenizer(assets.model.tokenizer_model)
        self.pad_id = tokenizer.sp.eos_id()
        correct_only = kind == "ref-tune" or config.correct_only
        train = read_examples(
            assets.train, tokenizer, max_len=config.seq_len, correct_only=correct_only
        )
        if kind == "critic":
            require_both_outcomes(train, assets.train)
            if config.critic.objective == "pairwise" and config.micro_batch_size < 2:
                raise WmtpError(
                    "the pairwise critic pairs records within a micro-batch, "
                    f"micro_batch_size {config.micro_batch_size} holds no pair",
                    hint="use --set micro_batch_size=4 (or more) with --objective pairwise",
                )
        if len(train) < config.batch_size:
            raise WmtpError(
                f"{len(train)} training records, fewer than one batch of {config.batch_size}",
                path=assets.train,
                hint="lower --set batch_size",
            )
        self.train_examples = train
        self.validation = (
            read_examples(
                assets.validation, tokenizer, max_len=config.seq_len, correct_only=correct_only
            )
            if assets.validation is not None
            else []
        )
        torch.manual_seed(config.seed)
        self.model: nn.Module = (
            build_critic(assets.model.root, config)
            if kind == "critic"
            else build_ref_model(assets.model.root, config)
        )
        self.model.to(device).train()
        self.trained = StageModel(self.model, config.lora.enabled)
        self.device = device
        self.autocast = autocast_dtype(config, device)
        per_epoch = len(train) // config.batch_size
        self.total_steps = config.max_steps or config.epochs * per_epoch
        self.optimizer = torch.optim.AdamW(
            self.trained.trainable_parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
        )
        self.step = 0
        self.tokens_seen = 0
        self.wall_s = 0.0
        self.metrics = MetricsLog(RunFolder(run_dir).metrics)

    def step_batch(self, step: int) -> list[Example]:
        per_epoch = len(self.train_examples) // self.config.batch_size
        epoch, index = divmod(step, per_epoch)
        batches = task_grouped_batches(
            self.train_examples, self.config.batch_size, self.config.seed + epoch
        )
        return batches[index]

    def micro_batches(self, examples: list[Example]) -> list[Batch]:
        size = self.config.micro_batch_size
        return [
            collate(examples[i : i + size], self.pad_id).to(self.device)
            for i in range(0, len(examples), size)
        ]

    def _autocast(self):
        dtype = self.autocast
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def term_count(self, batch: Batch) -> float:
        """How many terms the micro-batch adds to the step's loss: targets (ref-tune),
        records with a response (mc) or same-task (correct, incorrect) pairs (pairwise)."""
        if self.kind == "ref-tune":
            return float(batch.loss_mask.sum())
        if self.config.critic.objective == "pairwise":
            return float(correct_incorrect_pairs(batch.is_correct, batch.task_ids).sum())
        return float(batch.loss_mask.any(1).sum())

    def loss_sum(self, batch: Batch) -> Tensor:
        """The micro-batch's loss terms summed (with gradient)."""
        if self.kind == "ref-tune":
            return next_token_sum(self.model, batch)[0]
        logits = self.model(batch.tokens)
        objective = self.config.critic.objective
        loss = critic_loss(objective, logits, batch.loss_mask, batch.is_correct, batch.task_ids)
        assert loss is not None  # term_count was positive
        return loss * self.term_count(batch)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; each micro-batch is forwarded and backwarded in turn, so one
        micro-batch's activations are in memory at a time. The RNG (LoRA dropout) is
        reseeded from (seed, step) as in the policy trainer, so a resumed run repeats it."""
        step = self.step
        torch.manual_seed(seed_for(self.config.seed, step, 0))
        started = time.perf_counter()
        lr = learning_rate(self.config, step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self.micro_batches(self.step_batch(step))
        counts = [self.term_count(b) for b in micro]
        total = sum(counts)
        loss_value = 0.0
        for batch, count in zip(micro, counts, strict=True):
            if count == 0:
                continue
            with self._autocast():
                share = self.loss_sum(batch) / total
            share.backward()
            loss_value += float(share.detach())
        max_norm = self.config.clip_grad_norm or float("inf")
        params = self.trained.trainable_parameters()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(b.n_tokens for b in micro)
        elapsed = time.perf_counter() - started
        self.step += 1
        self.tokens_seen += tokens
        self.wall_s += elapsed
        return {
            "step": self.step,
            "kind": "train",
            "loss": loss_value,
            "terms": total,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": tokens / elapsed,
        }

    def validate(self, step: int) -> dict[str, Any] | None:
        if not self.validation:
            return None
        batches = self.micro_batches(self.validation)
        if self.config.eval_batches:
            batches = batches[: self.config.eval_batches]
        record: dict[str, Any] = {"step": step, "kind": "validation"}
        if self.kind == "ref-tune":
            with scoring_mode(self.model), self._autocast():
                sums = [next_token_sum(self.model, b) for b in batches]
            count = sum(n for _, n in sums)
            record["loss"] = float(sum(float(s) for s, _ in sums)) / max(count, 1)
            return record
        with self._autocast():
            values = [critic_values(self.model, b.tokens) for b in batches]
        scores = torch.cat(
            [response_mean(v, b.loss_mask) for v, b in zip(values, batches, strict=True)]
        ).cpu()
        correct = torch.cat([b.is_correct for b in batches]).cpu()
        tasks = [t for b in batches for t in b.task_ids]
        record["pairwise_accuracy"] = pairwise_accuracy(scores, correct, tasks)
        if correct.any() and not correct.all():
            record["auroc"] = auroc(scores, correct)
        return record

    # -- checkpoints and the run ---------------------------------------------------------

    def save(self) -> None:
        """A checkpoint of this step, written like the policy's (DCP, atomic rename)."""
        alone = Dist(0, 1, self.device)  # stage 1 has no process group (first_rank_alone)
        state = ckpt.TrainerState(self.step, self.total_steps, self.tokens_seen, self.wall_s, 1)
        ckpt.save_checkpoint(self.run_dir, state, self.trained, self.optimizer, {}, alone)
        ckpt.prune_checkpoints(self.run_dir, self.config.keep_checkpoints, alone)

    def resume(self) -> None:
        """Continue from the run folder's latest checkpoint (none: start at step 0)."""
        found = ckpt.completed_checkpoints(self.run_dir)
        if found:
            state = ckpt.load_checkpoint(found[-1], self.trained, self.optimizer, {})
            if state.total_steps != self.total_steps:
                raise WmtpError(
                    f"the checkpoint planned {state.total_steps} steps, "
                    f"this run {self.total_steps}",
                    path=found[-1],
                    hint="resume with the run's own --max-steps",
                )
            self.step, self.tokens_seen, self.wall_s = state.step, state.tokens_seen, state.wall_s
        self.metrics.rewind(self.step)

    def run(
        self, stop_at: int | None = None, on_step: Callable[[StepReport], None] | None = None
    ) -> StageResult:
        """Train to the planned end, or to `stop_at` steps as an interruption would;
        checkpoints every `checkpoint_every` steps and where it stops."""
        config = self.config
        end = min(self.total_steps, stop_at) if stop_at is not None else self.total_steps
        last_saved = self.step if ckpt.completed_checkpoints(self.run_dir) else -1
        while self.step < end:
            record = self.train_step()
            self.metrics.append(record)
            if on_step is not None:
                on_step(
                    StepReport(self.step, self.total_steps, record["loss"], record["tokens_per_s"])
                )
            every = config.eval_every
            if every and self.step % every == 0 and self.step < self.total_steps:
                self._log_validation()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save()
                last_saved = self.step
        if self.step < self.total_steps:
            if last_saved != self.step:
                self.save()
            return StageResult(self.run_dir, self.step, False, {})
        last_validation = self._log_validation()
        self.save_final()
        summary = {
            "experiment": self.kind,
            "steps": self.total_steps,
            "tokens_seen": self.tokens_seen,
            "wall_s": round(self.wall_s, 3),
            "final_validation": last_validation,
            "base_model": str(self.assets.model.root),
        }
        write_json(RunFolder(self.run_dir).summary, summary)
        return StageResult(self.run_dir, self.step, True, summary)

    def _log_validation(self) -> dict[str, Any] | None:
        result = self.validate(self.step)
        if result is not None:
            self.metrics.append(result)
        return result

    def save_final(self) -> None:
        """`final/`: the critic's weights, or the tuned reference as a model folder."""
        from safetensors.torch import save_file

        from weighted_mtp.train.final import _write_model_folder, source_dtype

        out = RunFolder(self.run_dir).final
        tmp = out.with_name(f".{out.name}{TEMP_MARKER}partial")
        shutil.rmtree(tmp, ignore_errors=True)
        source = self.assets.model
        try:
            if self.kind == "critic":
                tmp.mkdir(parents=True)
                state = {
                    k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                }
                save_file(state, tmp / CRITIC_WEIGHTS, metadata={"format": "pt"})
                shutil.copytree(source.root / "tokenizer", tmp / "tokenizer")
            else:
                from peft import PeftModel

                model = self.model
                if isinstance(model, PeftModel):  # LoRA: merged into the base
                    model = model.merge_and_unload()
                dtype = source_dtype(source, "model.norm.weight")  # config.json's torch_dtype
                state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
                _write_model_folder(tmp, state, source)
            write_json(tmp / STAGE_FILE, stage_record(self.kind, source, self.config))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def stage_record(kind: str, source: ModelPaths, config: TrainConfig) -> dict[str, Any]:
    """What stage 2 needs to rebuild and trust a stage-1 model."""
    metadata = read_json_or_none(source.metadata, "metadata.json") or {}
    return {
        "kind": kind,
        "base_model": str(source.root),
        "base_name": source.name,
        "tokenizer_sha256": sha256_file(source.tokenizer_model),
        "tokenizer_shared_with": metadata.get("tokenizer_shared_with"),
        "head_hidden": config.critic.head_hidden,
        "objective": config.critic.objective,
        "lora": config.to_dict()["lora"],
    }


def train_stage_one(
    layout: Layout,
    kind: str,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> StageResult | None:
    """Train a critic or a tuned reference (or continue one with `resume`, from the latest
    checkpoint in `run_dir`); None on ranks other than the first."""
    from weighted_mtp.train.distributed import first_rank_alone
    from weighted_mtp.train.runs import new_run_dir, require_verified_model, resolve_assets

    config.validate("config")
    dist_info = first_rank_alone()
    if dist_info is None:
        return None
    if run_dir is not None and not resume and RunFolder(run_dir).config.exists():
        raise WmtpError(
            "the run folder already holds a run",
            path=run_dir,
            hint="add --resume or choose a new --out",
        )
    assets = resolve_assets(layout, config.model, config.data, config.small)
    require_verified_model(layout, assets)
    chosen = run_dir or new_run_dir(layout, kind, assets.model.name)
    chosen.mkdir(parents=True, exist_ok=True)
    try:
        stage = StageOne(kind, config, assets, chosen, dist_info.device)
    except BaseException:
        if not any(chosen.iterdir()):
            chosen.rmdir()
        raise
    write_text(RunFolder(chosen).config, config_yaml(config))
    if resume:
        stage.resume()
    return stage.run(stop_at, on_step)
