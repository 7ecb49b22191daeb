"""`wmtp train`: run an experiment or the suite, plan a run's memory, plot runs. Parsing and
printing only; torch is imported inside the commands.

A config key's option is made from its field in `TrainConfig` (`config.Option`, the
description and the bounds) by `ConfigCommand` when a command is parsed or its help shown,
so `wmtp --help` imports no pydantic. A value given becomes a `Setting` naming the option,
so a bad value is reported as the user wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

import typer
from typer.core import TyperCommand
from typer.models import ParamMeta

from weighted_mtp import progress
from weighted_mtp.assets import TRAINING_RUNS
from weighted_mtp.cli._console import JsonOpt, console, print_json, progress_bars, state

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from weighted_mtp.train.config import Option, Setting

GIVEN = "wmtp.train.settings"  # ctx.meta: the config options given, as settings

app = typer.Typer(
    help="Train the experiments and the suite on the storage; plot runs.", no_args_is_help=True
)


class ConfigCommand(TyperCommand):
    """A train command with an option for each config field whose `Option` offers it to
    the command (`plan`: every one), made when the command is first parsed or its help shown."""

    def get_params(self, ctx: Any) -> list[Any]:
        if not getattr(self, "with_config", False):
            from weighted_mtp.train.config import fields, option_of

            options = ((key, field, option_of(field)) for key, field in fields())
            self.params[:0] = [
                config_option(key, field, option)
                for key, field, option in options
                if option and (self.name == "plan" or self.name in option.commands)
            ]
            self.with_config = True
        return super().get_params(ctx)


def config_option(key: str, field: FieldInfo, option: Option) -> Any:
    """typer's option of a config key (made as typer makes a function parameter's); a value
    given goes to `ctx.meta[GIVEN]` as a setting naming the option as written."""
    from weighted_mtp.train.config import Setting, bounds_text

    kind: Any = field.annotation
    if type(None) in get_args(kind):  # int | None
        kind = next(a for a in get_args(kind) if a is not type(None))
    one_way = kind is bool and "/" not in option.decls  # --small, --include-incorrect
    choices = "|".join(get_args(kind)) if get_origin(kind) is Literal else None

    def given(ctx: typer.Context, value: Any) -> None:
        if value is not None and not (one_way and value is False):
            written = option.decls.split("/")[-1 if value is False else 0]  # --lora or --full
            setting = Setting(key, option.flag_value if one_way else value, written)
            ctx.meta.setdefault(GIVEN, []).append(setting)

    bounds = bounds_text(field)
    info = typer.Option(
        False if one_way else None,
        option.decls,
        metavar=choices,
        help=f"{field.description} [{key}{': ' + bounds if bounds else ''}]".replace("`", ""),
        callback=given,
        expose_value=False,
    )
    annotation: Any = bool if one_way else (str if choices else kind) | None
    meta = ParamMeta(name=key.replace(".", "_"), default=info, annotation=annotation)
    return typer.main._get_param(meta)


def _settings(ctx: typer.Context, sets: list[str] | None) -> tuple[bool, list[Setting]]:
    """`--small`, and the config options given, then `--set key=value`, as settings."""
    from weighted_mtp.train.config import parse_set

    named: list[Setting] = ctx.meta.get(GIVEN, [])
    small = any(s.key == "small" and s.value for s in named)
    return small, [*named, *(parse_set(s) for s in sets or [])]


ConfigFile = Annotated[
    Path | None, typer.Option(help="A YAML config replacing the packaged Baseline one.")
]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Set a config key (repeatable)."),
]
EXPERIMENTS = {
    "baseline": "Train the Baseline MTP experiment (uniform weights on response tokens and EOS).",
    "critic": "Stage 1 of the Verifiable Critic: a value model (reference backbone + value "
    "head) trained on correct and incorrect solutions; reports pairwise accuracy and AUROC.",
    "ref-tune": "Stage 1 of Rho-1: the reference fine-tuned with next-token loss on the "
    "correct training solutions (or --data).",
    "verifiable": "Stage 2 of the Verifiable Critic: the policy weighted by w = clip(exp(A/beta), "
    "w_min, w_max) from the frozen critic's GAE advantages.",
    "rho1": "Stage 2 of Rho-1: the policy trained on the top kappa of the targets by excess loss "
    "CE_policy - CE_reference.",
}
DEFAULTS = (
    "\n\nDefaults come from the packaged config (micro with --small, else 7B); torchrun "
    "--nproc-per-node N -m weighted_mtp train {} ... trains on N ranks with FSDP2 (--nnodes "
    "M: on M machines)."
)


def train_experiment(
    ctx: typer.Context,
    config: ConfigFile = None,
    sets: Sets = None,
    stop_at: Annotated[
        int | None, typer.Option(help="Stop after this step as an interruption would.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default <root>/runs/<experiment>/<id>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out (or the latest run).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    from weighted_mtp.train.run_setup import resolve_run

    experiment, layout = str(ctx.info_name), state(ctx).layout
    small, settings = _settings(ctx, sets)
    run_config, run_dir = resolve_run(
        layout, experiment, small=small, settings=settings, file=config, out=out, resume=resume
    )
    from weighted_mtp.train.trainer import train  # imports torch: after the options are checked

    with progress_bars(not as_json):
        result = train(layout, run_config, run_dir=run_dir, resume=resume, stop_at=stop_at)
    validation = result.summary.get("final_validation") or {}
    if progress.global_rank() != 0:
        return
    if as_json:
        print_json(
            {
                "experiment": experiment,
                "run": str(result.run_dir),
                "completed": result.completed,
                "steps": result.steps_done,
                "final_loss": result.final_loss,
                "final_validation": validation,
            }
        )
    elif not result.completed:
        console.print(
            f"{experiment} stopped after step {result.steps_done} (checkpoint written); "
            f"continue with --resume --out {result.run_dir}",
            highlight=False,
        )
    else:
        shown = "".join(f", {k} {v:.4f}" for k, v in validation.items() if isinstance(v, float))
        console.print(
            f"{experiment} run complete: {result.steps_done} steps{shown} -> {result.run_dir}",
            highlight=False,
        )


for _name in TRAINING_RUNS:
    _help = EXPERIMENTS[_name] + DEFAULTS.format(_name)
    app.command(_name, cls=ConfigCommand, help=_help)(train_experiment)


@app.command(cls=ConfigCommand)
def suite(
    ctx: typer.Context,
    sets: Sets = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the five runs and the comparison.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Baseline, critic -> Verifiable Critic, ref-tune -> Rho-1 with the same data order,
    seed and batch; then comparison.md, comparison.json and validation_loss.png. Under
    torchrun every stage trains on all ranks."""
    from weighted_mtp.train.suite import run_suite

    small, settings = _settings(ctx, sets)
    with progress_bars(not as_json):
        folder = run_suite(
            state(ctx).layout,
            small=small,
            settings=settings,
            out=out,
            on_stage=lambda name: progress.logger.info(f"suite: {name}"),
        )
    if progress.global_rank() != 0:
        return
    if as_json:
        import json

        comparison = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
        print_json({"folder": str(folder), "comparison": comparison})
    else:
        console.print(f"comparison: {folder / 'comparison.md'}", highlight=False)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (with metrics.jsonl).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
) -> None:
    """Draw loss curves (mean and per head, train and validation) of runs on one figure."""
    from weighted_mtp.train.plot import plot_runs

    console.print(f"wrote {plot_runs(runs, out)}", highlight=False)


@app.command(cls=ConfigCommand)
def plan(
    ctx: typer.Context,
    experiment: Annotated[
        str, typer.Argument(help="baseline, critic, ref-tune, verifiable or rho1.")
    ],
    config: ConfigFile = None,
    sets: Sets = None,
    ranks: Annotated[int, typer.Option(help="Ranks (GPUs) the run shards over.")] = 1,
    device_memory: Annotated[
        float | None,
        typer.Option(help="Memory of one device in GiB, for a verdict and what to change."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="What the run trains on: cuda (bf16) or cpu (float32).")
    ] = "cuda",
    as_json: JsonOpt = False,
) -> None:
    """Plan a run's peak memory per rank before running it, for every experiment of the
    suite (stage 1 too): one training step of the configured models traced without
    allocating them (fake tensors, a fake process group of --ranks ranks), split into
    parameters, gradients, optimizer state, activations, logits (a critic: its value head)
    and, for a policy run, the frozen helper; with --device-memory, whether it fits and what
    to change. The config is built as `wmtp train EXPERIMENT` builds it from the same
    options."""
    from weighted_mtp.train.config import build_config

    small, settings = _settings(ctx, sets)
    run_config = build_config(experiment, small=small, settings=settings, file=config)
    from weighted_mtp.train.memory_plan import HEADROOM, gib, plan_memory  # imports torch

    with (
        progress_bars(not as_json),
        progress.status(f"tracing a {experiment} step on {ranks} rank(s)"),
    ):
        result = plan_memory(
            state(ctx).layout, run_config, ranks=ranks, device=device, device_gib=device_memory
        )
    if as_json:
        print_json(result.as_record())
        return
    from rich.table import Column, Table  # on use: rich is slow to import

    helper = result.models.helper
    console.print(
        f"{experiment}: {result.models.name}"
        + (f" + frozen {helper.kind} {helper.name}" if helper else "")
        + f", {ranks} rank(s), {result.device}, micro-batch {result.rows} x "
        f"{result.seq_len} tokens, {result.accumulation} per step",
        highlight=False,
    )
    table = Table("per rank", Column("GiB", justify="right"))
    for name, size in {**result.split, "total": result.peak}.items():
        table.add_row(name, f"{gib(size):.2f}")
    console.print(table)
    if result.budget is None or result.device_gib is None:
        console.print("give --device-memory GiB for a verdict", highlight=False)
        return
    console.print(
        f"{'fits' if result.fits else 'does not fit'}: {gib(result.peak):.2f} GiB of a "
        f"{gib(result.budget):.2f} GiB budget ({HEADROOM:.0%} of {result.device_gib:g} GiB)",
        highlight=False,
    )
    for change in result.suggestions:
        mark = "fits" if change.fits else "still too large"
        console.print(f"  {change.change}: {gib(change.peak):.2f} GiB ({mark})", highlight=False)
