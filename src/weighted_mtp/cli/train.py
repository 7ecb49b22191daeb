"""`wmtp train`: run an experiment or the suite, plot runs. Parsing and printing only; torch
is imported inside the commands.

The five experiment commands are made from one table (`COMMANDS`): every one takes the
shared options (declared once, in `SHARED`), the MTP policy's take `POLICY` too, and each
its own (`--objective`, `--critic`, `--kappa`, ...). An option that sets a config key
becomes a `Setting` naming the option, so a bad value is reported as the user wrote it.
"""

from __future__ import annotations

import inspect
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from weighted_mtp import progress
from weighted_mtp.assets import TRAIN_DATASET
from weighted_mtp.cli._console import console, err_console, print_json, progress_bars, state

if TYPE_CHECKING:
    from weighted_mtp.train.config import Setting
    from weighted_mtp.train.trainer import RunResult, StepReport

T = TypeVar("T")

app = typer.Typer(
    help="Train the experiments and the suite on the storage; plot runs.", no_args_is_help=True
)


@dataclass(frozen=True)
class Flag:
    """One option of the train commands: its declaration, and the config key it sets (None
    for how to run: --out, --resume, --stop-at, --config, --set)."""

    name: str  # the parameter's name
    decls: str  # typer's declaration: "--kappa", "--lora/--full"
    type: Any
    help: str
    key: str | None = None
    default: Any = None
    convert: Callable[[Any], Any] | None = None  # the key's value from the option's

    def parameter(self) -> inspect.Parameter:
        # Annotated[type, Option] built from values: typer reads it from the signature.
        annotation = operator.getitem(
            Annotated, (self.type, typer.Option(self.decls, help=self.help))
        )
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=annotation
        )

    def setting(self, value: Any) -> Setting | None:
        """The config setting of the option's value; None when the option was not given."""
        from weighted_mtp.train.config import Setting

        if self.key is None:
            return None
        if self.convert is not None:
            value = self.convert(value)
        return None if value is None else Setting(self.key, value, self.decls.split("/")[0])


def _true_or_unset(value: bool) -> bool | None:
    return True if value else None


SMALL = Flag(
    "small",
    "--small",
    bool,
    "The micro models, the small dataset and their packaged config.",
    "small",
    False,
    _true_or_unset,
)
MAX_STEPS = Flag(
    "max_steps", "--max-steps", int | None, "Optimizer steps (default: one epoch).", "max_steps"
)
SEED = Flag("seed", "--seed", int | None, "Seed of data order, init and dropout.", "seed")
SETS = Flag("sets", "--set", list[str] | None, "Override a config key: key=value (repeatable).")
SHARED = (
    Flag("model", "--model", str | None, "Storage model name or model folder.", "model"),
    Flag("data", "--data", str | None, f"Dataset name (default {TRAIN_DATASET}).", "data"),
    SMALL,
    Flag("config", "--config", Path | None, "A YAML config replacing the packaged Baseline one."),
    SETS,
    MAX_STEPS,
    SEED,
    Flag("lora", "--lora/--full", bool | None, "LoRA or full fine-tuning.", "lora.enabled"),
    Flag("stop_at", "--stop-at", int | None, "Stop after this step as an interruption would."),
    Flag("out", "--out", Path | None, "Run folder (default <root>/runs/<experiment>/<id>)."),
    Flag("resume", "--resume", bool, "Continue the run in --out (or the latest run).", None, False),
)
POLICY = (
    Flag("n_future", "--n-future", int | None, "Heads to train (1 = next token only).", "n_future"),
    Flag(
        "naive_heads",
        "--naive-heads",
        bool,
        "All heads' logits at once (the oracle path).",
        "naive_heads",
        False,
        _true_or_unset,
    ),
)


@dataclass(frozen=True)
class Command:
    experiment: str
    help: str
    flags: tuple[Flag, ...]


COMMANDS = (
    Command(
        "baseline",
        "Train the Baseline MTP experiment (uniform weights on response tokens and EOS).",
        POLICY,
    ),
    Command(
        "critic",
        "Stage 1 of the Verifiable Critic: a value model (reference backbone + value head) "
        "trained on correct and incorrect solutions; reports pairwise accuracy and AUROC.",
        (
            Flag(
                "objective",
                "--objective",
                str | None,
                "mc (every position regresses to R) or pairwise (every same-task pair).",
                "critic.objective",
            ),
        ),
    ),
    Command(
        "ref-tune",
        "Stage 1 of Rho-1: the reference fine-tuned with next-token loss on the correct "
        "training solutions (or --data).",
        (),
    ),
    Command(
        "verifiable",
        "Stage 2 of the Verifiable Critic: the policy weighted by w = clip(exp(A/beta), "
        "w_min, w_max) from the frozen critic's GAE advantages.",
        (
            *POLICY,
            Flag(
                "critic_run",
                "--critic",
                str | None,
                "The critic's run folder (wmtp train critic).",
                "critic.run",
            ),
            Flag(
                "include_incorrect",
                "--include-incorrect",
                bool,
                "Train on incorrect solutions too (default: correct only).",
                "correct_only",
                False,
                lambda given: False if given else None,
            ),
        ),
    ),
    Command(
        "rho1",
        "Stage 2 of Rho-1: the policy trained on the top kappa of the targets by excess loss "
        "CE_policy - CE_reference.",
        (
            *POLICY,
            Flag(
                "reference",
                "--reference",
                str | None,
                "A ref-tune run folder, a storage model or a model folder.",
                "rho1.reference",
            ),
            Flag(
                "kappa",
                "--kappa",
                float | None,
                "Fraction of targets trained on, in (0, 1].",
                "rho1.kappa",
            ),
            Flag(
                "score",
                "--score",
                str | None,
                "Select by the excess loss (signed) or its size (absolute).",
                "rho1.score",
            ),
        ),
    ),
)


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


def _on_main_rank() -> bool:
    """Global rank 0 (torchrun's RANK, across machines) prints; the others stay quiet."""
    return int(os.environ.get("RANK", "0")) == 0


def _with_progress(run: Callable[[_ProgressBar | None], T]) -> T:
    """Run a training loop with a progress bar and status lines (loading, validating,
    writing final/), shown on the main rank's terminal only."""
    bar = (
        _ProgressBar() if _on_main_rank() and progress.shows() and err_console.is_terminal else None
    )
    try:
        with progress_bars():
            return run(bar)
    finally:
        if bar is not None:
            bar.close()


def _settings(flags: tuple[Flag, ...], values: dict[str, Any]) -> list[Setting]:
    """The options given, then `--set key=value`, as config settings."""
    from weighted_mtp.train.config import parse_set

    named = [flag.setting(values[flag.name]) for flag in flags]
    return [s for s in named if s is not None] + [parse_set(s) for s in values["sets"] or []]


def _report(experiment: str, result: RunResult) -> None:
    if not result.completed:
        console.print(
            f"{experiment} stopped after step {result.steps_done} (checkpoint written); "
            f"continue with --resume --out {result.run_dir}",
            highlight=False,
        )
        return
    validation = result.summary.get("final_validation") or {}
    shown = [f"{k} {v:.4f}" for k, v in validation.items() if isinstance(v, float)]
    console.print(
        f"{experiment} run complete: {result.steps_done} steps"
        f"{', ' + ', '.join(shown) if shown else ''} -> {result.run_dir}",
        highlight=False,
    )


def _train(ctx: typer.Context, experiment: str, flags: tuple[Flag, ...], **values: Any) -> None:
    from weighted_mtp.train.run_setup import resolve_run

    layout = state(ctx).layout
    config, run_dir = resolve_run(
        layout,
        experiment,
        small=values["small"],
        settings=_settings(flags, values),
        file=values["config"],
        out=values["out"],
        resume=values["resume"],
    )
    from weighted_mtp.train.trainer import train  # imports torch: after the options are checked

    result = _with_progress(
        lambda bar: train(
            layout,
            config,
            run_dir=run_dir,
            resume=values["resume"],
            stop_at=values["stop_at"],
            on_step=bar,
        )
    )
    if _on_main_rank():
        _report(experiment, result)


def _add_command(command: Command) -> None:
    """`wmtp train EXPERIMENT` with the shared options and the experiment's own."""
    flags = (*SHARED, *command.flags)

    def run(ctx: typer.Context, **values: Any) -> None:
        _train(ctx, command.experiment, flags, **values)

    context = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    run.__signature__ = inspect.Signature([context, *(f.parameter() for f in flags)])  # type: ignore[attr-defined]
    run.__doc__ = command.help + (
        "\n\nDefaults come from the packaged config (micro with --small, else 7B); torchrun "
        f"--nproc-per-node N -m weighted_mtp train {command.experiment} ... trains on N ranks "
        "with FSDP2 (--nnodes M: on M machines)."
    )
    app.command(command.experiment)(run)


for _command in COMMANDS:
    _add_command(_command)


@app.command()
def suite(
    ctx: typer.Context,
    small: Annotated[bool, typer.Option(SMALL.decls, help=SMALL.help)] = False,
    max_steps: Annotated[int | None, typer.Option(MAX_STEPS.decls, help=MAX_STEPS.help)] = None,
    seed: Annotated[int | None, typer.Option(SEED.decls, help=SEED.help)] = None,
    sets: Annotated[list[str] | None, typer.Option(SETS.decls, help=SETS.help)] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the five runs and the comparison.")
    ] = None,
) -> None:
    """Baseline, critic -> Verifiable Critic, ref-tune -> Rho-1 with the same data order,
    seed and batch; then comparison.md, comparison.json and validation_loss.png. Under
    torchrun every stage trains on all ranks."""
    from weighted_mtp.train.suite import run_suite

    flags = (SMALL, MAX_STEPS, SEED)
    values = {"small": small, "max_steps": max_steps, "seed": seed, "sets": sets}
    with progress_bars():
        folder = run_suite(
            state(ctx).layout,
            small=small,
            settings=_settings(flags, values),
            out=out,
            on_stage=lambda name: progress.logger.info(f"suite: {name}"),
        )
    if _on_main_rank():
        console.print(f"comparison: {folder / 'comparison.md'}", highlight=False)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (with metrics.jsonl).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
) -> None:
    """Draw loss curves (mean and per head, train and validation) of runs on one figure."""
    from weighted_mtp.train.plot import plot_runs

    console.print(f"wrote {plot_runs(runs, out)}", highlight=False)


def _own_flag(experiment: str, name: str) -> Flag:
    """An experiment command's own option, by its parameter name."""
    command = next(c for c in COMMANDS if c.experiment == experiment)
    return next(f for f in command.flags if f.name == name)


PLAN = (
    *(f for f in SHARED if f.name not in ("stop_at", "out", "resume")),
    *POLICY,
    _own_flag("verifiable", "critic_run"),
    _own_flag("rho1", "reference"),
    Flag("ranks", "--ranks", int, "Ranks (GPUs) the run shards over.", None, 1),
    Flag(
        "device_memory",
        "--device-memory",
        float | None,
        "Memory of one device in GiB, for a verdict and what to change.",
    ),
    Flag(
        "device",
        "--device",
        str,
        "What the run trains on: cuda (bf16) or cpu (float32).",
        None,
        "cuda",
    ),
    Flag("as_json", "--json", bool, "Machine-readable output.", None, False),
)


def plan(ctx: typer.Context, experiment: str, **values: Any) -> None:
    """Plan a run's peak memory per rank before running it, for every experiment of the
    suite (stage 1 too): one training step of the configured models traced without
    allocating them (fake tensors, a fake process group of --ranks ranks), split into
    parameters, gradients, optimizer state, activations, logits (a critic: its value head)
    and, for a policy run, the frozen helper; with --device-memory, whether it fits and what
    to change. The config is built as `wmtp train EXPERIMENT` builds it from the same
    options."""
    from weighted_mtp.train.config import build_config

    run_config = build_config(
        experiment, small=values["small"], settings=_settings(PLAN, values), file=values["config"]
    )
    from weighted_mtp.train.memory_plan import plan_memory  # imports torch

    ranks = values["ranks"]
    with err_console.status(f"tracing a {experiment} step on {ranks} rank(s)"):
        result = plan_memory(
            state(ctx).layout,
            run_config,
            ranks=ranks,
            device=values["device"],
            device_gib=values["device_memory"],
        )
    if values["as_json"]:
        print_json(result.as_record())
        return
    _print_memory_plan(result.as_record())


def _add_plan() -> None:
    context = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    experiment = inspect.Parameter(
        "experiment",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[
            str, typer.Argument(help="baseline, critic, ref-tune, verifiable or rho1.")
        ],
    )
    parameters = [context, experiment, *(f.parameter() for f in PLAN)]
    plan.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    app.command("plan")(plan)


_add_plan()


def _print_memory_plan(record: dict[str, Any]) -> None:
    from rich.table import Table  # on use: rich is slow to import

    helper = record["helper"]
    batch = record["micro_batch"]
    title = (
        f"{record['experiment']}: {record['model']}"
        + (f" + frozen {helper['kind']} {helper['model']}" if helper else "")
        + f", {record['ranks']} rank(s), {record['device']}, micro-batch "
        f"{batch['rows']} x {batch['tokens']} tokens, {record['accumulation']} per step"
    )
    console.print(title, highlight=False)
    table = Table()
    table.add_column("per rank")
    table.add_column("GiB", justify="right")
    for name, value in record["per_rank_gib"].items():
        table.add_row(name, f"{value:.2f}")
    console.print(table)
    if record["fits"] is None:
        console.print("give --device-memory GiB for a verdict", highlight=False)
        return
    verdict = "fits" if record["fits"] else "does not fit"
    console.print(
        f"{verdict}: {record['per_rank_gib']['total']:.2f} GiB of a "
        f"{record['budget_gib']:.2f} GiB budget ({record['headroom']:.0%} of "
        f"{record['device_memory_gib']:g} GiB)",
        highlight=False,
    )
    for suggestion in record["suggestions"]:
        mark = "fits" if suggestion["fits"] else "still too large"
        console.print(
            f"  {suggestion['change']}: {suggestion['total_gib']:.2f} GiB ({mark})",
            highlight=False,
        )
