"""`wmtp train suite`: the whole comparison in one command.

Baseline, critic → Verifiable Critic, ref-tune → Rho-1, each in `<out>/<experiment>/`, all
from the same Baseline config (same data order, seed and effective batch; the packaged
overlay of each experiment changes only what defines it; with `--small` the suite's own
overlay `suite_micro.yaml` bounds every run to a few CPU minutes). Then the three policies'
pass@k with intervals (`wmtp eval compare`, into `<out>/pass_at_k/`), and `comparison.json`
(a `SuiteComparison`), `comparison.md` and `validation_loss.png` in `<out>`. Each stage's
wall and CPU time (user + sys of this process, all threads) are measured around the whole
stage: loading, training, validation and saving.

Under torchrun every stage trains data-parallel on all ranks, in the one process group the
suite joins for all five; rank 0 writes the comparison.
"""

from __future__ import annotations

import datetime as dt
import math
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.assets import COMPARE_DATASETS, SUITE
from weighted_mtp.storage.atomic import read_json_or_none, write_json, write_text
from weighted_mtp.storage.layout import Layout, RunFolder
from weighted_mtp.storage.run_folder import claim_run_folder
from weighted_mtp.train.config import Setting, TrainConfig, build_config
from weighted_mtp.train.run_setup import read_metrics, runs_dir

if TYPE_CHECKING:
    from weighted_mtp.eval.compare import CompareSettings

POLICY_RUNS = ("baseline", "verifiable", "rho1")
STAGE_OF = {"verifiable": "critic", "rho1": "ref-tune"}
STAGES = ("baseline", "critic", "verifiable", "ref-tune", "rho1")


@dataclass(frozen=True)
class StageTime:
    """A whole stage's wall time and this process's CPU time (user + sys) during it."""

    wall_s: float
    cpu_s: float


def _clock() -> StageTime:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return StageTime(time.perf_counter(), usage.ru_utime + usage.ru_stime)


def timed(work: Callable[[], Any]) -> StageTime:
    start = _clock()
    work()
    end = _clock()
    return StageTime(round(end.wall_s - start.wall_s, 1), round(end.cpu_s - start.cpu_s, 1))


def weight_statistics(run_dir: Path) -> dict[str, float]:
    """The mean over training steps of each weight metric the weighting logged."""
    steps = [
        r["weights"] for r in read_metrics(run_dir) if r.get("kind") == "train" and "weights" in r
    ]
    names = sorted({name for s in steps for name in s})
    return {n: sum(s[n] for s in steps if n in s) / sum(n in s for s in steps) for n in names}


@dataclass(frozen=True)
class StageOne:
    """A weighted experiment's stage 1 (the critic, the reference tune): its run, steps,
    optimizer time, whole-stage times and final validation."""

    run: str
    steps: int | None
    train_s: float | None
    wall_s: float
    cpu_s: float
    final_validation: dict[str, Any] | None


@dataclass(frozen=True)
class ExperimentEntry:
    """One policy run's results; `wall_s`/`cpu_s` are its whole stage (the `_with_stage_one`
    times add its stage 1's, for the weighted ones), `train_s` the optimizer steps alone."""

    run: str
    normalize: str | None
    final_validation_loss: float | None
    final_validation_per_head: list[float] | None
    tokens_trained: int | None
    steps: int | None
    train_s: float | None
    weights: dict[str, float]
    wall_s: float
    cpu_s: float
    stage_one: StageOne | None = None
    wall_s_with_stage_one: float | None = None
    cpu_s_with_stage_one: float | None = None

    @property
    def total(self) -> StageTime:
        """Its times with its stage 1's, where it has one."""
        return StageTime(
            self.wall_s if self.wall_s_with_stage_one is None else self.wall_s_with_stage_one,
            self.cpu_s if self.cpu_s_with_stage_one is None else self.cpu_s_with_stage_one,
        )


@dataclass(frozen=True)
class SuiteComparison:
    """The suite's comparison.json: the shared training settings, each policy's results,
    each stage's times, where the policies' pass@k comparison is, and the suite's total."""

    seed: int
    batch_size: int
    steps: int | str  # max_steps, or "one epoch of"
    experiments: dict[str, ExperimentEntry]
    stages: dict[str, StageTime]
    pass_at_k: str
    total: StageTime


def experiment_entry(out: Path, experiment: str, times: dict[str, StageTime]) -> ExperimentEntry:
    """One policy run's results, from its summary and metrics and the stages' times."""
    run_dir = out / experiment
    summary = read_json_or_none(RunFolder(run_dir).summary, "summary.json") or {}
    validation = summary.get("final_validation") or {}
    entry = ExperimentEntry(
        run=str(run_dir),
        normalize=summary.get("normalize"),
        final_validation_loss=validation.get("loss"),
        final_validation_per_head=validation.get("per_head"),
        tokens_trained=summary.get("tokens_seen"),
        steps=summary.get("steps"),
        train_s=summary.get("wall_s"),
        weights=weight_statistics(run_dir),
        wall_s=times[experiment].wall_s,
        cpu_s=times[experiment].cpu_s,
    )
    if experiment not in STAGE_OF:
        return entry
    name = STAGE_OF[experiment]
    stage = read_json_or_none(RunFolder(out / name).summary, "summary.json") or {}
    return replace(
        entry,
        stage_one=StageOne(
            run=str(out / name),
            steps=stage.get("steps"),
            train_s=stage.get("wall_s"),
            wall_s=times[name].wall_s,
            cpu_s=times[name].cpu_s,
            final_validation=stage.get("final_validation"),
        ),
        wall_s_with_stage_one=round(times[experiment].wall_s + times[name].wall_s, 1),
        cpu_s_with_stage_one=round(times[experiment].cpu_s + times[name].cpu_s, 1),
    )


def _number(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def comparison_markdown(comparison: SuiteComparison) -> str:
    experiments = comparison.experiments
    n_heads = max((len(e.final_validation_per_head or []) for e in experiments.values()), default=0)
    head_cols = "".join(f" head {k} |" for k in range(n_heads))
    lines = [
        "# Baseline vs Verifiable Critic vs Rho-1",
        "",
        f"Same data order, seed {comparison.seed} and global batch "
        f"{comparison.batch_size}; {comparison.steps} steps each.",
        "",
        f"| experiment | normalize | validation loss |{head_cols} tokens | wall s | CPU s "
        "| x Baseline wall | x Baseline CPU | weights |",
        "| --- | --- | --- |" + " --- |" * n_heads + " --- | --- | --- | --- | --- | --- |",
    ]
    baseline = experiments.get("baseline")
    for name, e in experiments.items():
        heads = "".join(f" {_number(x)} |" for x in (e.final_validation_per_head or []))
        weights = ", ".join(f"{k} {_number(v, 3)}" for k, v in e.weights.items()) or "-"
        mine = e.total
        ratios = [
            _number(own / base, 2) if base else "-"
            for own, base in (
                (mine.wall_s, baseline.wall_s if baseline else None),
                (mine.cpu_s, baseline.cpu_s if baseline else None),
            )
        ]
        lines.append(
            f"| {name} | {e.normalize} | {_number(e.final_validation_loss)} |{heads} "
            f"{_number(e.tokens_trained)} | {_number(mine.wall_s, 1)} | {_number(mine.cpu_s, 1)} "
            f"| {ratios[0]} | {ratios[1]} | {weights} |"
        )
    verifiable = experiments.get("verifiable")
    stage_one = verifiable.stage_one if verifiable else None
    critic = (stage_one.final_validation if stage_one else None) or {}
    total = comparison.total
    lines += [
        "",
        "Wall and CPU (user + sys) time of a whole stage: loading, training, validation and "
        "saving; the weighted experiments' include their stage 1 (on a shared machine the "
        "CPU ratio is the steadier one). The suite took "
        f"{_number(total.wall_s, 1)} s wall, {_number(total.cpu_s, 1)} s CPU. "
        "Critic validation: "
        f"pairwise accuracy {_number(critic.get('pairwise_accuracy'))}, "
        f"AUROC {_number(critic.get('auroc'))}.",
        "",
        "![validation loss](validation_loss.png)",
        "",
        f"pass@k of the three policies, with intervals: [{comparison.pass_at_k}]"
        f"({comparison.pass_at_k}).",
        "",
    ]
    return "\n".join(lines)


def suite_configs(out: Path, small: bool, settings: Sequence[Setting]) -> dict[str, TrainConfig]:
    """The five stages' configs: the same Baseline config and settings, each experiment's
    overlay, and the stage-2 runs pointed at their stage-1 runs in `out`."""
    helpers = {
        "verifiable": [Setting("critic.run", str(out / "critic"))],
        "rho1": [Setting("rho1.reference", str(out / "ref-tune"))],
    }
    return {
        name: build_config(
            name, small=small, settings=[*settings, *helpers.get(name, [])], suite=True
        )
        for name in STAGES
    }


def run_suite(
    layout: Layout,
    *,
    small: bool,
    settings: Sequence[Setting],
    out: Path | None,
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Run the five stages in order into `out` (a new or empty folder, locked by rank 0
    until the comparison is written), then write the comparison; returns the folder."""
    from weighted_mtp.eval.compare import require_evaluable
    from weighted_mtp.train.distributed import distributed, on_main
    from weighted_mtp.train.trainer import train

    evaluation = policy_evaluation(small)
    with ExitStack() as held:  # rank 0 holds the suite folder until the comparison is written
        with distributed() as dist_info:

            def claim() -> Path:
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
                chosen = out or runs_dir(layout, SUITE) / stamp
                require_evaluable(layout, evaluation)
                claimed = claim_run_folder(
                    chosen, SUITE, resume=False, command="wmtp train suite", layout=layout
                )
                return held.enter_context(claimed)

            folder: Path = on_main(dist_info, claim)
            configs = suite_configs(folder, small, settings)
            start = _clock()
            times: dict[str, StageTime] = {}
            for name, config in configs.items():
                if on_stage is not None and dist_info.is_main:
                    on_stage(name)
                times[name] = timed(partial(train, layout, config, run_dir=folder / name))
            first = dist_info.is_main
        # The training group is left; every rank generates its share of each evaluation
        # (`eval.ranks` joins its own group) and the first writes the comparison.
        pass_at_k = compare_policies(layout, folder, evaluation)
        if first:
            write_comparison(folder, configs, times, start, pass_at_k)
    return folder


def write_comparison(
    folder: Path,
    configs: dict[str, TrainConfig],
    times: dict[str, StageTime],
    start: StageTime,
    pass_at_k: Path,
) -> None:
    """The policies' validation-loss plot, `comparison.json` and `comparison.md`."""
    from weighted_mtp.train.plot import plot_runs

    plot_runs([folder / name for name in POLICY_RUNS], folder / "validation_loss.png")
    end = _clock()
    baseline = configs["baseline"]
    comparison = SuiteComparison(
        seed=baseline.seed,
        batch_size=baseline.batch_size,
        steps=baseline.max_steps or "one epoch of",
        experiments={name: experiment_entry(folder, name, times) for name in POLICY_RUNS},
        stages=dict(times),
        pass_at_k=pass_at_k.relative_to(folder).as_posix(),
        total=StageTime(round(end.wall_s - start.wall_s, 1), round(end.cpu_s - start.cpu_s, 1)),
    )
    write_json(folder / "comparison.json", asdict(comparison))
    write_text(folder / "comparison.md", comparison_markdown(comparison))


# ------------------------------------------------------------------ pass@k of the policies


def policy_evaluation(small: bool) -> CompareSettings:
    """How the suite measures its policies' pass@k: `wmtp eval compare`'s defaults, or with
    `--small` greedy pass@1 on a few tasks and short completions (seconds on a micro model)."""
    from weighted_mtp.eval.compare import CompareSettings, default_ks
    from weighted_mtp.eval.generate import SamplingConfig
    from weighted_mtp.eval.run import RunSettings

    if small:
        greedy = RunSettings(
            dataset=COMPARE_DATASETS[0],
            sampling=SamplingConfig(max_new_tokens=24, temperature=0.0),
            n=1,
            limit=4,
        )
        return CompareSettings(COMPARE_DATASETS, (1,), greedy)
    sampled = RunSettings(dataset=COMPARE_DATASETS[0])
    return CompareSettings(COMPARE_DATASETS, default_ks(sampled.n), sampled)


def compare_policies(layout: Layout, out: Path, settings: CompareSettings) -> Path:
    """The three policies' pass@k, the Baseline first, written into the suite's folder;
    returns the comparison's comparison.md."""
    from weighted_mtp.eval.compare import ComparedRun, compare_runs

    folder = layout.suite_comparison(out)
    runs = [ComparedRun(str(out / name), name) for name in POLICY_RUNS]
    compare_runs(layout, runs, settings, folder, reuse=False)
    return folder.markdown
