"""`wmtp train`: run an experiment, plot runs. Parsing and printing only; torch is imported
inside the commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from weighted_mtp.cli._console import console, err_console, state

if TYPE_CHECKING:
    from weighted_mtp.train.loop import StepReport

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
            console=err_console,
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
    data: Annotated[str | None, typer.Option(help="Dataset name (codecontests).")] = None,
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

    main_rank = int(os.environ.get("RANK", "0")) == 0
    bar = _ProgressBar() if main_rank and err_console.is_terminal else None
    try:
        result = train(
            layout, run_config, run_dir=run_dir, resume=resume, stop_at=stop_at, on_step=bar
        )
    finally:
        if bar is not None:
            bar.close()
    if not main_rank:
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
