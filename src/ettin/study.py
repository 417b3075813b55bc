"""`ettin study`: the demo's comparison over a ladder of model sizes on one stream of data.

Each rung is a full `ettin demo` run (tokenizer, data, the pair through three phases, export,
evaluation on the demo suite) in `OUT/<rung>/`; the CPU ladder shares one tokenizer and one prepared
data folder (`OUT/tokenizer`, `OUT/data`) and one recipe, so the rungs differ in model size alone and
see the identical token stream. The study then collects, per task family, each arch's score against
its parameter count and the encoder - decoder gap (with its paired interval) against size, as the
paper's size figures do, into `OUT/study.json`, `OUT/study.md` and `OUT/study.png`.

Ladders:
- `cpu`: the shipped `demo` recipe at sizes tiny, mini and demo (about 1M tokens each; see docs/evaluation.md
  for its time on 2 cores).
- `gpu`: the shipped `study-17m`, `study-32m`, `study-68m`: the paper's three smallest shapes
  with its 50k tokenizer at a few billion tokens, for a GPU and data prepared by the user.
Every rung is idempotent (a demo run is), so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ettin.errors import EttinError

STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_PNG = "study.png"


@dataclass(frozen=True)
class Rung:
    """One size of the ladder: a recipe and the overrides that make it this size."""

    label: str
    recipe: str  # a shipped recipe's file name, or a path
    overrides: tuple[str, ...] = ()
    shared_data: bool = True  # use OUT/tokenizer and OUT/data (one stream for the whole ladder)


LADDERS: dict[str, tuple[Rung, ...]] = {
    "cpu": tuple(Rung(size, "demo", (f"model.size={size}",)) for size in ("tiny", "mini", "demo")),
    "gpu": tuple(Rung(size, f"study-{size}", (), shared_data=False) for size in ("17m", "32m", "68m")),
}


def get_ladder(name: str, sizes: Sequence[str] | None = None) -> list[Rung]:
    if name not in LADDERS:
        raise EttinError(f"unknown ladder '{name}'", field="ladder", fix=f"choose from: {', '.join(LADDERS)}")
    rungs = list(LADDERS[name])
    if sizes:
        known = {r.label: r for r in rungs}
        if name == "cpu":
            rungs = [known.get(s) or Rung(s, "demo", (f"model.size={s}",)) for s in sizes]
        else:
            unknown = [s for s in sizes if s not in known]
            if unknown:
                raise EttinError(
                    f"the {name} ladder has no size {', '.join(unknown)}", field="sizes", fix=f"use {', '.join(known)}"
                )
            rungs = [known[s] for s in sizes]
    if len(rungs) < 2:
        raise EttinError("a size ladder needs at least two sizes", field="sizes", fix="give e.g. --sizes tiny,mini")
    return rungs


@dataclass
class StudyResult:
    out: Path
    rungs: dict[str, dict] = field(default_factory=dict)  # label -> that demo's results.json
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)


def run_study(
    out: str | os.PathLike = "runs/study",
    *,
    ladder: str = "cpu",
    sizes: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    suite: str | None = None,
    tasks: list[str] | None = None,
    limit: int | None = None,
    cross: bool = False,
    cross_overrides: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    eval_progress=None,
    render_command=None,
) -> StudyResult:
    """Run every rung (a demo each), then summarise and plot. `overrides` apply to every rung's recipe."""
    import time

    from ettin.demo import DEMO_SUITE, recipe_path, run_demo
    from ettin.recipe import load_recipe

    out = Path(out)
    result = StudyResult(out=out)
    for rung in get_ladder(ladder, sizes):
        recipe = Path(rung.recipe) if Path(rung.recipe).is_file() else recipe_path(rung.recipe)
        if rung.shared_data:
            shared = [f"tokenizer={out / 'tokenizer'}", f"data_dir={out / 'data'}"]
        else:  # the recipe's own tokenizer and data (prepared by the user), not the demo's defaults
            own = load_recipe(recipe, list(overrides))
            shared = [f"tokenizer={own.tokenizer}", f"data_dir={own.data_dir}"]
        log(f"[bold]=== study rung {rung.label}[/bold] ({recipe.name} {' '.join(rung.overrides)})")
        t0 = time.perf_counter()
        demo = run_demo(
            out / rung.label,
            recipe=recipe,
            overrides=[*shared, *rung.overrides, *overrides],
            suite=suite or DEMO_SUITE,
            tasks=tasks,
            limit=limit,
            cross=cross,
            cross_overrides=list(cross_overrides),
            progress=progress,
            log=log,
            eval_progress=eval_progress,
            render_command=render_command,
        )
        result.seconds[rung.label] = time.perf_counter() - t0
        result.rungs[rung.label] = demo.results or {}
    result.summary = summarise(result.rungs, result.seconds)
    result.written = write_study(result.summary, out)
    return result


# ------------------------------------------------------------------------------------- summary


def summarise(rungs: dict[str, dict], seconds: dict[str, float] | None = None) -> dict:
    """Per rung: both archs' parameters and per-task scores; per task: the encoder - decoder gap with
    its paired interval; per family (task kind): the tasks and each rung's outcome."""
    from ettin.eval.report import PAPER_WINNER, family_findings, task_result

    out: dict = {"rungs": [], "tasks": {}, "families": {}}
    for label, res in rungs.items():
        pair = res.get("pair", {})
        enc, dec = pair.get("encoder"), pair.get("decoder")
        if not (enc and dec):
            raise EttinError(f"study rung {label} has no evaluated pair", fix="rerun the study; each rung is resumable")
        models = res["models"]
        rung = {
            "label": label,
            "parameters": {a: models[m]["info"].get("parameters") for a, m in (("encoder", enc), ("decoder", dec))},
            "tokens": models[enc].get("tokens"),
            "seconds": round((seconds or {}).get(label, 0.0), 1),
            "findings": {k: f["outcome"] for k, f in family_findings(res).items()},
        }
        out["rungs"].append(rung)
        for t in res["tasks"]:
            e, d = task_result(models, enc, t), task_result(models, dec, t)
            if not (e and e.ok and d and d.ok):
                continue
            entry = out["tasks"].setdefault(t, {"kind": e.kind, "metric": e.score.metric, "points": []})
            gap = pair.get("tasks", {}).get(t) or {}
            entry["points"].append(
                {
                    "rung": label,
                    "encoder": {"value": e.score.value, "low": e.score.ci["low"], "high": e.score.ci["high"]},
                    "decoder": {"value": d.score.value, "low": d.score.ci["low"], "high": d.score.ci["high"]},
                    "gap": {k: gap.get(k) for k in ("diff", "low", "high")},
                    "chance": e.score.chance,
                }
            )
    for t, entry in out["tasks"].items():
        fam = out["families"].setdefault(entry["kind"], {"paper": PAPER_WINNER.get(entry["kind"]), "tasks": []})
        fam["tasks"].append(t)
    return out


def render_study(summary: dict) -> str:
    from ettin.eval.report import FAMILY_NAMES, _fmt_tokens

    rungs = summary["rungs"]
    labels = [r["label"] for r in rungs]
    lines = [
        "# ettin study: encoder vs decoder over a size ladder",
        "",
        "Every rung: the same recipe, tokenizer and token stream; only the model size differs. Scores and "
        "gaps as in each rung's report.md (95% intervals; the gap's interval is a paired bootstrap).",
        "",
        "| rung | parameters (encoder / decoder) | training tokens | seconds |",
        "|---|---|---|---|",
    ]
    for r in rungs:
        p = r["parameters"]
        lines.append(
            f"| {r['label']} | {p['encoder']:,} / {p['decoder']:,} | {_fmt_tokens(r['tokens'])} | {r['seconds']:.0f} |"
        )
    lines += ["", f"![score and gap against parameters]({STUDY_PNG})", "", "## Encoder - decoder gap per task", ""]
    lines += ["| family | task | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for kind, fam in summary["families"].items():
        for t in fam["tasks"]:
            cells = {p["rung"]: p["gap"] for p in summary["tasks"][t]["points"]}
            row = []
            for label in labels:
                g = cells.get(label)
                row.append(
                    f"{g['diff']:+.3f} [{g['low']:+.2f}, {g['high']:+.2f}]" if g and g.get("diff") is not None else "-"
                )
            lines.append(f"| {FAMILY_NAMES.get(kind, kind)} | {t} | " + " | ".join(row) + " |")
    lines += ["", "## Findings per rung (paired intervals only)", ""]
    kinds = list(summary["families"])
    lines += ["| rung | " + " | ".join(FAMILY_NAMES.get(k, k) for k in kinds) + " |", "|---|" + "---|" * len(kinds)]
    for r in rungs:
        lines.append(f"| {r['label']} | " + " | ".join(r["findings"].get(k, "-") for k in kinds) + " |")
    lines += [
        "",
        "The paper (17M to 1B parameters, 2T tokens): the encoder ahead on classification and retrieval, the "
        "decoder on generation, and the gaps growing with size. A ladder of CPU sizes at about a million tokens "
        "sits far below that range; read the gap column for a trend, not the single cells.",
        "",
    ]
    return "\n".join(lines)


def plot_study(summary: dict, path: str | os.PathLike) -> Path:
    """Per task family a row: score against parameters (encoder solid, decoder dashed, one colour per
    task, 95% intervals) and the encoder - decoder gap against parameters (paired intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ettin.eval.report import FAMILY_NAMES, _save_fig

    params = {r["label"]: r["parameters"] for r in summary["rungs"]}
    kinds = list(summary["families"])
    fig, axes = plt.subplots(max(1, len(kinds)), 2, figsize=(10, 3.2 * max(1, len(kinds))), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, kind in zip(axes, kinds):
        score_ax, gap_ax = row
        for i, t in enumerate(summary["families"][kind]["tasks"]):
            pts = summary["tasks"][t]["points"]
            colour = palette[i % len(palette)]
            for arch, style in (("encoder", "-"), ("decoder", "--")):
                xs = [params[p["rung"]][arch] for p in pts]
                ys = [p[arch]["value"] for p in pts]
                err = [[y - p[arch]["low"] for y, p in zip(ys, pts)], [p[arch]["high"] - y for y, p in zip(ys, pts)]]
                score_ax.errorbar(
                    xs, ys, yerr=err, linestyle=style, marker="o", capsize=2, color=colour, label=f"{t} {arch}"
                )
            gaps = [(params[p["rung"]]["encoder"], p["gap"]) for p in pts if p["gap"].get("diff") is not None]
            if gaps:
                xs = [x for x, _ in gaps]
                ys = [g["diff"] for _, g in gaps]
                err = [[g["diff"] - g["low"] for _, g in gaps], [g["high"] - g["diff"] for _, g in gaps]]
                gap_ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, color=colour, label=t)
        paper = summary["families"][kind]["paper"]
        name = FAMILY_NAMES.get(kind, kind)
        score_ax.set_title(f"{name}: score (solid encoder, dashed decoder)", fontsize=9)
        gap_ax.set_title(f"{name}: encoder - decoder (paper: {paper} ahead)", fontsize=9)
        gap_ax.axhline(0, color="black", linewidth=0.8)
        for ax in row:
            ax.set_xscale("log")
            ax.set_xlabel("parameters", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, Path(path))
    plt.close(fig)
    return Path(path)


def write_study(summary: dict, out: str | os.PathLike) -> list[Path]:
    from ettin.io import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        atomic_write_json(out / STUDY_JSON, summary),
        plot_study(summary, out / STUDY_PNG),
        atomic_write_text(out / STUDY_MD, render_study(summary)),
    ]


def gap_trend(summary: dict, task: str) -> float | None:
    """Slope of the gap against log10(parameters) for a task (None with fewer than two points)."""
    params = {r["label"]: r["parameters"]["encoder"] for r in summary["rungs"]}
    pts = [
        (math.log10(params[p["rung"]]), p["gap"]["diff"])
        for p in summary["tasks"].get(task, {}).get("points", [])
        if p["gap"].get("diff") is not None
    ]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var if var else None
