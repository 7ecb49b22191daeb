"""Loss curves of one or more runs on one figure: the loss and each head's, train and
validation, read from the runs' metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from weighted_mtp.figures import png_bytes, pyplot
from weighted_mtp.storage.atomic import write_bytes
from weighted_mtp.train.run_setup import read_metrics


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Left: the loss of every run (train line, validation markers); right: each head's
    train loss. Written atomically as PNG."""
    fig, (ax_loss, ax_heads) = pyplot().subplots(1, 2, figsize=(13, 5))
    for index, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        color = f"C{index % 10}"
        train = [r for r in records if r.get("kind") == "train"]
        valid = [r for r in records if r.get("kind") == "validation" and r.get("loss") is not None]
        label = run_dir.name
        ax_loss.plot(
            [r["step"] for r in train],
            [r["loss"] for r in train],
            color=color,
            label=f"{label} train",
        )
        if valid:
            ax_loss.plot(
                [r["step"] for r in valid],
                [r["loss"] for r in valid],
                "o--",
                color=color,
                label=f"{label} validation",
            )
        n_heads = max((len(r["per_head"]) for r in train), default=0)
        for k in range(n_heads):
            ax_heads.plot(
                [r["step"] for r in train],
                [r["per_head"][k] for r in train],
                color=color,
                alpha=1.0 - 0.6 * k / max(1, n_heads),
                linestyle=("-", "--", "-.", ":")[k % 4],
                label=f"{label} head {k}",
            )
    for ax, title in ((ax_loss, "loss (mean over heads)"), (ax_heads, "train loss per head")):
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    write_bytes(out, png_bytes(fig))
    return out
