"""`wmtp train`: run an experiment, plot runs. Parsing and printing only; torch is imported
inside the commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from weighted_mtp.assets import TRAIN_DATASET
from weighted_mtp.cli._console import console, err_console, state

if TYPE_CHECKING:
    from weighted_mtp.train.loop import StepReport

T = TypeVar("T")

app = typer.Typer(help="Train the experiments on the storage; plot runs.", no_args_is_help=True)


def _overrides(
    model: str | None,
    data: str | None,
    small: bool | None,
    max_steps: int | None,
    seed: int | None,
    n_future: int | None,
    lora: bool | None,
    naive_heads: bool | None,
    sets: list[str],
) -> dict[str, Any]:
    """Options given on the command line, then `--set key=value`, as config overrides."""
    from weighted_mtp.train.config import parse_set

    named = {
        "model": model,
        "data": data,
        "small": small,
        "max_steps": max_steps,
        "seed": seed,
        "n_future": n_future,
        "lora.enabled": lora,
        "naive_heads": naive_heads,
    }
    overrides = {k: v for k, v in named.items() if v is not None}
    overrides.update(parse_set(item) for item in sets)
    return overrides


class _ProgressBar:
    """Steps, loss and tokens/s on stderr (rank 0, on a terminal)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            console=err_console.get(),
            transient=True,
        )
        self.task: Any = None

    def __call__(self, report: StepReport) -> None:
        if self.task is None:
            self.bars.start()
            self.task = self.bars.add_task("train", total=report.total_steps, loss="-", speed="-")
        self.bars.update(
            self.task,
            completed=report.step,
            loss=f"{report.loss:.4f}",
            speed=f"{report.tokens_per_s:,.0f}",
        )

    def close(self) -> None:
        if self.task is not None:
            self.bars.stop()


@app.command()
def baseline(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Storage model name or model folder.")] = None,
    data: Annotated[
        str | None, typer.Option(help=f"Dataset name (default {TRAIN_DATASET}).")
    ] = None,
    small: Annotated[
        bool | None,
        typer.Option("--small/--no-small", help="The small dataset and the micro config."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A YAML config replacing the packaged one.")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: key=value (repeatable)."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimizer steps planned (default: one epoch).")
    ] = None,
    stop_at: Annotated[
        int | None, typer.Option(help="Stop after this step as an interruption would (checkpoint).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default <root>/runs/baseline/<id>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out (or the latest run).")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of data order, init and dropout.")] = None,
    n_future: Annotated[
        int | None, typer.Option(help="Heads to train (1 = next token only).")
    ] = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--full", help="LoRA or full fine-tuning.")
    ] = None,
    naive_heads: Annotated[
        bool | None,
        typer.Option("--naive-heads", help="All heads' logits at once (the oracle path)."),
    ] = None,
) -> None:
    """Train the Baseline MTP experiment (uniform weights on response tokens and EOS).

    Defaults come from the packaged config (micro with --small, else 7B); torchrun
    --nproc-per-node N -m weighted_mtp train baseline ... trains on N ranks with FSDP2.
    """
    from weighted_mtp.train.config import load_config
    from weighted_mtp.train.runs import resolve_run

    layout = state(ctx).layout
    overrides = _overrides(
        model, data, small, max_steps, seed, n_future, lora, naive_heads, sets or []
    )
    run_config, run_dir = resolve_run(
        layout,
        "baseline",
        lambda: load_config(config, micro=bool(small)),
        overrides,
        out,
        resume,
    )
    from weighted_mtp.train.loop import train  # imports torch: after the options are checked

    result = _with_progress(
        lambda bar: train(
            layout, run_config, run_dir=run_dir, resume=resume, stop_at=stop_at, on_step=bar
        )
    )
    if not _on_main_rank():
        return
    if result.completed:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
        console.print(
            f"run complete: {result.steps_done} steps, loss {loss} -> {result.run_dir}",
            highlight=False,
        )
    else:
        console.print(
            f"stopped after step {result.steps_done} (checkpoint written); "
            f"continue with --resume --out {result.run_dir}",
            highlight=False,
        )


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (with metrics.jsonl).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
) -> None:
    """Draw loss curves (mean and per head, train and validation) of runs on one figure."""
    from weighted_mtp.train.plot import plot_runs

    console.print(f"wrote {plot_runs(runs, out)}", highlight=False)


# The weighted experiments (stage 1: the helper model; stage 2: the weighted policy) ------

SmallOpt = Annotated[
    bool, typer.Option("--small/--no-small", help="Micro models and the small dataset.")
]
ConfigOpt = Annotated[Path | None, typer.Option(help="A YAML config replacing the packaged one.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: key=value (repeatable).")
]
StepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (default: one epoch).")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of data order, init and dropout.")]
ModelOpt = Annotated[str | None, typer.Option(help="Storage model name or model folder.")]
DataOpt = Annotated[str | None, typer.Option(help=f"Dataset name (default {TRAIN_DATASET}).")]


def _on_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _with_progress(run: Callable[[_ProgressBar | None], T]) -> T:
    """Run a training loop with a progress bar, shown on the main rank's terminal only."""
    bar = _ProgressBar() if _on_main_rank() and err_console.is_terminal else None
    try:
        return run(bar)
    finally:
        if bar is not None:
            bar.close()


def _experiment_config(
    experiment: str, config: Path | None, small: bool, overrides: dict[str, Any]
):
    """The packaged Baseline config with the experiment's overlay (or --config), then options."""
    from weighted_mtp.train.config import load_config, with_overrides
    from weighted_mtp.train.suite import experiment_config

    if config is not None:
        return with_overrides(
            load_config(config, micro=small), {"experiment": experiment} | overrides, "options"
        )
    return experiment_config(experiment, small, overrides)


@dataclass(frozen=True)
class StageRun:
    """Where a stage-1 run goes and whether it continues or stops early."""

    out: Path | None
    resume: bool
    stop_at: int | None


StopAtOpt = Annotated[int | None, typer.Option(help="Stop after this step (checkpoint).")]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue the run in --out (or the latest) from its checkpoint.")
]


def _stage_one(
    ctx: typer.Context,
    kind: str,
    model: str | None,
    data: str | None,
    small: bool,
    config: Path | None,
    sets: list[str] | None,
    max_steps: int | None,
    run: StageRun,
    seed: int | None,
    extra: dict[str, Any],
) -> None:
    from weighted_mtp.train.runs import resolve_run

    layout = state(ctx).layout
    overrides = _overrides(model, data, None, max_steps, seed, None, None, None, sets or [])
    run_config, run_dir = resolve_run(
        layout,
        kind,
        lambda: _experiment_config(kind, config, small, {}),
        overrides | extra,
        run.out,
        run.resume,
    )
    from weighted_mtp.train.stage_one import train_stage_one  # imports torch

    result = _with_progress(
        lambda bar: train_stage_one(
            layout,
            kind,
            run_config,
            run_dir=run_dir,
            resume=run.resume,
            stop_at=run.stop_at,
            on_step=bar,
        )
    )
    if result is None:
        return
    if not result.completed:
        console.print(
            f"{kind} stopped after step {result.steps} (checkpoint written); "
            f"continue with --resume --out {result.run_dir}",
            highlight=False,
        )
        return
    validation = result.summary.get("final_validation") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in validation.items() if isinstance(v, float))
    console.print(
        f"{kind} run complete: {result.steps} steps{', ' + shown if shown else ''} "
        f"-> {result.run_dir}",
        highlight=False,
    )


@app.command()
def critic(
    ctx: typer.Context,
    model: ModelOpt = None,
    data: DataOpt = None,
    small: SmallOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    max_steps: StepsOpt = None,
    stop_at: StopAtOpt = None,
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = None,
    objective: Annotated[
        str | None, typer.Option(help="mc (every position regresses to R) or pairwise.")
    ] = None,
) -> None:
    """Stage 1 of the Verifiable Critic: a value model (reference backbone + value head)
    trained on correct and incorrect solutions; reports pairwise accuracy and AUROC."""
    extra = {"critic.objective": objective} if objective is not None else {}
    run = StageRun(out, resume, stop_at)
    _stage_one(ctx, "critic", model, data, small, config, sets, max_steps, run, seed, extra)


@app.command("ref-tune")
def ref_tune(
    ctx: typer.Context,
    model: ModelOpt = None,
    data: DataOpt = None,
    small: SmallOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    max_steps: StepsOpt = None,
    stop_at: StopAtOpt = None,
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Stage 1 of Rho-1: the reference fine-tuned with next-token loss on the correct
    training solutions (or --data)."""
    run = StageRun(out, resume, stop_at)
    _stage_one(ctx, "ref-tune", model, data, small, config, sets, max_steps, run, seed, {})


def _stage_two(
    ctx: typer.Context,
    experiment: str,
    small: bool,
    config: Path | None,
    overrides: dict[str, Any],
    out: Path | None,
    resume: bool,
    stop_at: int | None,
) -> None:
    from weighted_mtp.train.runs import resolve_run

    layout = state(ctx).layout
    run_config, run_dir = resolve_run(
        layout,
        experiment,
        lambda: _experiment_config(experiment, config, small, {}),
        overrides,
        out,
        resume,
    )
    from weighted_mtp.train.weighted_runs import train_weighted  # imports torch

    result = _with_progress(
        lambda bar: train_weighted(
            layout, run_config, run_dir=run_dir, resume=resume, stop_at=stop_at, on_step=bar
        )
    )
    if _on_main_rank():
        state_text = "run complete" if result.completed else "stopped (checkpoint written)"
        console.print(
            f"{experiment} {state_text}: {result.steps_done} steps -> {result.run_dir}",
            highlight=False,
        )


@app.command()
def verifiable(
    ctx: typer.Context,
    critic_run: Annotated[
        str | None, typer.Option("--critic", help="The critic's run folder (wmtp train critic).")
    ] = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    small: SmallOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    max_steps: StepsOpt = None,
    stop_at: Annotated[int | None, typer.Option(help="Stop after this step (checkpoint).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    seed: SeedOpt = None,
    include_incorrect: Annotated[
        bool, typer.Option(help="Train on incorrect solutions too (default: correct only).")
    ] = False,
) -> None:
    """Stage 2 of the Verifiable Critic: the policy weighted by
    w = clip(exp(A/beta), w_min, w_max) from the frozen critic's GAE advantages."""
    overrides = _overrides(model, data, None, max_steps, seed, None, None, None, sets or [])
    if critic_run is not None:
        overrides["critic.run"] = critic_run
    if include_incorrect:
        overrides["correct_only"] = False
    _stage_two(ctx, "verifiable", small, config, overrides, out, resume, stop_at)


@app.command()
def rho1(
    ctx: typer.Context,
    reference: Annotated[
        str | None,
        typer.Option(help="A ref-tune run folder, a storage model or a model folder."),
    ] = None,
    kappa: Annotated[
        float | None, typer.Option(help="Fraction of targets trained on, in (0, 1].")
    ] = None,
    score: Annotated[str | None, typer.Option(help="signed (default) or absolute.")] = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    small: SmallOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    max_steps: StepsOpt = None,
    stop_at: Annotated[int | None, typer.Option(help="Stop after this step (checkpoint).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    seed: SeedOpt = None,
) -> None:
    """Stage 2 of Rho-1: the policy trained on the top kappa of the targets by excess loss
    CE_policy - CE_reference."""
    overrides = _overrides(model, data, None, max_steps, seed, None, None, None, sets or [])
    named = {"rho1.reference": reference, "rho1.kappa": kappa, "rho1.score": score}
    overrides |= {k: v for k, v in named.items() if v is not None}
    _stage_two(ctx, "rho1", small, config, overrides, out, resume, stop_at)


@app.command()
def suite(
    ctx: typer.Context,
    small: SmallOpt = False,
    max_steps: StepsOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the five runs and the comparison.")
    ] = None,
    seed: SeedOpt = None,
    sets: SetOpt = None,
) -> None:
    """Baseline, critic -> Verifiable Critic, ref-tune -> Rho-1 with the same data order,
    seed and batch; then comparison.md, comparison.json and validation_loss.png."""
    from weighted_mtp.train.suite import run_suite

    overrides = _overrides(None, None, None, max_steps, seed, None, None, None, sets or [])
    folder = run_suite(
        state(ctx).layout,
        small=small,
        overrides=overrides,
        out=out,
        on_stage=lambda name: err_console.print(f"suite: {name}", highlight=False),
    )
    console.print(f"comparison: {folder / 'comparison.md'}", highlight=False)
