"""`ettin plot RUN`: loss against tokens for both models of a run, phase boundaries marked."""

from __future__ import annotations

import os
from pathlib import Path

from ettin.errors import EttinError
from ettin.train.metrics import read_metrics

ARCH_COLORS = {"encoder": "tab:blue", "decoder": "tab:orange"}


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None, *, smooth: int | None = None) -> Path:
    """Write a PNG (default RUN/loss.png). Training loss is drawn smoothed over the raw points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ettin.io import atomic_path
    from ettin.recipe import load_recipe

    run = Path(run)
    series = {arch: read_metrics(run / arch) for arch in ("encoder", "decoder")}
    series = {a: rows for a, rows in series.items() if rows}
    if not series:
        raise EttinError(
            "has no metrics to plot (no encoder/metrics.jsonl or decoder/metrics.jsonl)",
            path=run,
            fix="train first: `ettin train RECIPE --out RUN`",
        )
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for arch, rows in series.items():
        train = [r for r in rows if r.get("kind", "train") == "train" and r.get("loss") is not None]
        if train:
            x = [r["tokens"] for r in train]
            y = [r["loss"] for r in train]
            window = smooth if smooth is not None else max(1, len(y) // 50)
            ax.plot(x, y, color=ARCH_COLORS[arch], alpha=0.25, linewidth=0.8)
            ax.plot(
                x,
                _smooth(y, window),
                color=ARCH_COLORS[arch],
                linewidth=1.6,
                label=f"{arch} train ({'MLM' if arch == 'encoder' else 'CLM'})",
            )
        evals = [r for r in rows if r.get("kind") == "eval" and r.get("eval_loss") is not None]
        if evals:
            ax.plot(
                [r["tokens"] for r in evals],
                [r["eval_loss"] for r in evals],
                "o--",
                color=ARCH_COLORS[arch],
                markersize=4,
                linewidth=1,
                label=f"{arch} held-out",
            )
    recipe_path = run / "recipe.yaml"
    if recipe_path.is_file():
        recipe = load_recipe(recipe_path)
        offsets = recipe.phase_offsets()
        top = ax.get_ylim()[1]
        for offset, phase in zip(offsets, recipe.phases):
            if offset > 0:
                ax.axvline(offset, color="gray", linestyle=":", linewidth=1)
            ax.text(offset, top, f" {phase.name}", va="top", ha="left", fontsize=8, color="dimgray")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss")
    ax.set_title(f"{run.name}: training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out is not None else run / "loss.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
