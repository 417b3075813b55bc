"""report.md, results.json and plots for a compared pair.

The report says what the numbers can carry: every value has its interval, each encoder/decoder gap
has a paired interval, chance levels sit beside the scores, and a closing section states, from the
model sizes and token counts, how far a run is from the scale at which the paper's findings hold.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ettin.eval.result import TaskResult
from ettin.io import atomic_path, atomic_write_json, atomic_write_text

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
BARS_FILE = "tasks.png"
DYNAMICS_FILE = "dynamics.png"
HELDOUT_FILE = "heldout_loss.png"

# The paper's direction per task kind (ettin-spec.md section 6): who wins at every size from 17M up.
PAPER_WINNER = {
    "classification": "encoder",
    "retrieval": "encoder",
    "multiple_choice": "decoder",
    "generation": "decoder",
}
# Smallest Ettin pair (17m): 17M parameters with the 50k vocabulary, about 2T tokens.
PAPER_SMALLEST_PARAMS = 16_913_600
PAPER_TOKENS = 2.0e12


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _fmt_tokens(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n == 0:
        return "0"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def task_result(models: dict, model: str, task: str) -> TaskResult | None:
    """A model's result on a task, read back from the results.json form."""
    d = models[model]["results"]["tasks"].get(task)
    return TaskResult.from_dict(d) if d is not None else None


def _cell(r: TaskResult | None) -> str:
    if r is None:
        return "-"
    if not r.ok:
        return "failed"
    ci = r.score.ci or {}
    return f"{_fmt(r.score.value)} [{_fmt(ci.get('low'), 2)}, {_fmt(ci.get('high'), 2)}]"


def _verdict(kind: str, pair: dict | None) -> str:
    if not pair or pair.get("diff") is None or math.isnan(pair["diff"]):
        return "-"
    if pair["low"] > 0:
        winner = "encoder"
    elif pair["high"] < 0:
        winner = "decoder"
    else:
        return "no clear difference"
    expected = PAPER_WINNER.get(kind)
    agree = "as in the paper" if winner == expected else "opposite to the paper"
    return f"{winner} ahead ({agree})"


def render_markdown(results: dict) -> str:
    models: dict = results["models"]
    pair = results.get("pair", {})
    enc, dec = pair.get("encoder"), pair.get("decoder")
    others = [m for m in models if m not in (enc, dec)]
    order = [m for m in (enc, dec) if m] + others
    tasks = results["tasks"]
    lines = [f"# ettin compare: {results.get('run_name', 'run')}", ""]
    lines += [
        f"Suite `{results['suite']}`, seed {results['seed']}, {len(tasks)} tasks, "
        f"{results.get('seconds', 0):.0f} s. Every model saw the same items in the same order.",
        "",
        "| model | arch | parameters | layers x hidden | training tokens | checkpoint |",
        "|---|---|---|---|---|---|",
    ]
    for m in order:
        info = models[m]["info"]
        lines.append(
            f"| {m} | {info.get('arch')} | {info.get('parameters', 0):,} | {info.get('layers')} x {info.get('hidden_size')} "
            f"| {_fmt_tokens(models[m].get('tokens'))}"
            + (f" (continued from {models[m]['init']})" if models[m].get("init") else "")
            + f" | {models[m].get('tag') or '-'} |"
        )
    if results.get("tokens_note"):
        lines += ["", results["tokens_note"]]
    lines += ["", "## Results", ""]
    header = "| task | kind | metric | n | " + " | ".join(order) + " | chance |"
    if enc and dec:
        header += " encoder - decoder [95% CI] | verdict |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for t in tasks:
        rows = {m: task_result(models, m, t) for m in order}
        ref = next((r for r in rows.values() if r and r.ok), None) or next(iter(rows.values()))
        kind = ref.kind if ref else ""
        score = ref.score if ref else None
        line = (
            f"| {t} | {kind} | {score.metric if score else '-'} | {score.n if score else '-'} | "
            + " | ".join(_cell(rows[m]) for m in order)
            + f" | {_fmt(score.chance if score else None)} |"
        )
        if enc and dec:
            p = pair.get("tasks", {}).get(t)
            diff = f"{p['diff']:+.3f} [{p['low']:+.2f}, {p['high']:+.2f}]" if p else "-"
            line += f" {diff} | {_verdict(kind, p)} |"
        lines.append(line)
    lines += [
        "",
        "Values are `score [95% interval]`. Accuracies use Wilson score intervals; nDCG@10 uses a percentile "
        "bootstrap over queries (1,000 seeded resamples). The encoder - decoder gap uses a paired bootstrap over "
        "the same items; a verdict needs that interval to exclude 0. Chance: majority class (classification), "
        "1/choices (multiple choice), a random ranking (retrieval), 0 (LAMBADA).",
        "",
        f"![per-task scores]({BARS_FILE})",
        "",
        *findings_lines(results),
        "### Methods",
        "",
    ]
    for t in tasks:
        for m in order:
            r = task_result(models, m, t)
            if r and r.ok and not models[m].get("baseline_of"):
                lines.append(f"- **{t}**, {m}: {r.score.method}.")
    if any(models[m].get("baseline_of") for m in order):
        lines.append("- `*-init` columns: the same configs freshly initialised (seeded), scored the same way.")
    lines.append("")
    # ---------------------------------------------------------------------------------- honesty
    lines += ["## What this comparison can and cannot show", ""]
    for m in order:
        ok = [t for t in tasks if (r := task_result(models, m, t)) and r.ok]
        better = [t for t in ok if task_result(models, m, t).above_chance()]
        lines.append(
            f"- {m}: above chance (interval excludes it) on {len(better)} of {len(ok)} tasks"
            + (f": {', '.join(better)}." if better else ".")
        )
    with_init = [m for m in order if models[m].get("vs_init")]
    for m in with_init:
        vs = models[m]["vs_init"]
        ahead = [t for t, p in vs.items() if p["low"] > 0]
        behind = [t for t, p in vs.items() if p["high"] < 0]
        lines.append(
            f"- {m} against its random initialisation (paired interval excludes 0): ahead on "
            f"{len(ahead)} of {len(vs)} tasks"
            + (f" ({', '.join(ahead)})" if ahead else "")
            + (f", behind on {', '.join(behind)}" if behind else "")
            + "."
        )
    for m in order:
        vs = models[m].get("vs_native")
        if not vs:
            continue
        native = models[m]["cross_of"]
        ahead = [t for t, p in vs.items() if p["low"] > 0]
        behind = [t for t, p in vs.items() if p["high"] < 0]
        lines.append(
            f"- {m} (cross-objective) against the native {native} (paired interval excludes 0): ahead on "
            f"{len(ahead)} of {len(vs)} tasks"
            + (f" ({', '.join(ahead)})" if ahead else "")
            + (f", behind on {', '.join(behind)}" if behind else "")
            + ". The paper finds that cross-objective training does not close the gap to the native arch."
        )
    if not with_init:
        lines.append(
            "- Above chance is not the same as learned: frozen features of an untrained network already "
            "carry token identity, so linear probes and zero-shot retrieval can beat chance without any "
            "training. `--baselines` adds the pair's random initialisation to the table to measure this."
        )
    overlap = results.get("pretraining_overlap") or {}
    if overlap:
        sources = sorted({s for v in overlap.values() for s in v})
        lines.append(
            f"- Data overlap: the run trained on {', '.join(f'`{s}`' for s in sources)}, which holds the "
            f"texts of {', '.join(overlap)} (the documents, not their labels or queries). Scores there "
            "may reflect memorised text as well as general ability."
        )
    params = [models[m]["info"].get("parameters", 0) for m in order]
    tokens = [t for m in order if (t := models[m].get("tokens"))]
    small = max(params) < PAPER_SMALLEST_PARAMS / 2 or (tokens and max(tokens) < 1e9)
    seen = f"saw {_fmt_tokens(max(tokens))} tokens" if tokens else "an unknown number of training tokens"
    if small:
        lines += [
            f"- Scale: the largest model here has {max(params):,} parameters and {seen}; "
            f"the smallest Ettin pair has {PAPER_SMALLEST_PARAMS:,} and "
            f"about {_fmt_tokens(int(PAPER_TOKENS))}. At this scale most scores sit at or near chance, so the "
            "table tests the pipeline (same tasks, same items, both archs scored by their own method) rather "
            "than the paper's findings.",
            "- What it can show: that both members of the pair were trained and evaluated identically; "
            "whether either learned anything measurable (scores above chance); gaps large enough for their "
            "paired interval to exclude zero.",
            "- What it cannot show: the paper's findings (encoders ahead on classification and retrieval, "
            "decoders ahead on generative tasks, gaps growing with size, cross-objective training not closing "
            "them). Those hold from 17M parameters and trillions of tokens; a gap here, in either direction, "
            "says little about them, and 'no clear difference' is the expected outcome.",
        ]
    else:
        lines += [
            "- Scale: these models are within the range the paper studied; compare the verdicts with the "
            "paper's (encoder ahead on classification and retrieval, decoder on generation). One seed and one "
            "subsample per task: treat single-task verdicts with care.",
        ]
    if results.get("suite") == "quick":
        lines.append(
            "- Quick suite: seeded subsamples, linear probes instead of fine-tuning, zero-shot "
            "retrieval on a small corpus. The paper fine-tunes for classification and retrieval; "
            "`--suite full` does so (and uses all items)."
        )
    lines.append("")
    # ---------------------------------------------------------------------------------- dynamics
    dyn = results.get("dynamics") or {}
    if any(dyn.values()):
        lines += ["## Training dynamics", "", f"![metric against training tokens]({DYNAMICS_FILE})", ""]
        if any(p.get("tokens") is None for points in dyn.values() for p in points):
            lines += ["Some token counts are unknown, so the plot puts the checkpoints in order, by tag.", ""]
        dyn_tasks = results.get("dynamics_tasks", [])
        lines += ["| model | tag | tokens | " + " | ".join(dyn_tasks) + " |", "|---|---|---|" + "---|" * len(dyn_tasks)]
        for m, points in dyn.items():
            for p in points:
                point = {t: TaskResult.from_dict(d) for t, d in p["tasks"].items()}
                cells = [_fmt(point[t].score.value) if t in point and point[t].ok else "failed" for t in dyn_tasks]
                lines.append(f"| {m} | {p['tag']} | {_fmt_tokens(p.get('tokens'))} | " + " | ".join(cells) + " |")
        lines.append("")
    elif results.get("dynamics_note"):
        lines += ["## Training dynamics", "", results["dynamics_note"], ""]
    lines += heldout_lines(results)
    failed = results.get("failed") or []
    if failed:
        lines += ["## Failures", ""]
        for f in failed:
            lines.append(f"- {f['model']} / {f['task']}: {f['error']}")
        lines.append("")
    lines += [
        "## Files",
        "",
        f"- `{RESULTS_FILE}`: everything above, with per-item scores.",
        "- `models/<model>/<task>.json`: one file per model and task.",
    ]
    if results.get("command"):
        lines += ["", f"Reproduce (same numbers for the same models and seed): `{results['command']}`"]
    return "\n".join(lines) + "\n"


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_bars(results: dict, path: str | os.PathLike) -> Path:
    """Per-task grouped bars (one colour per model) with interval whiskers and a chance tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    pair = results.get("pair", {})
    order = [m for m in (pair.get("encoder"), pair.get("decoder")) if m] + [
        m for m in models if m not in (pair.get("encoder"), pair.get("decoder"))
    ]
    tasks = list(results["tasks"])
    width = 0.8 / max(1, len(order))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    trained = [m for m in order if not models[m].get("baseline_of")]
    colour = {m: palette[i % len(palette)] for i, m in enumerate(trained)}
    for m in order:
        if models[m].get("baseline_of"):  # an initialisation: its model's colour, faded and hatched
            colour[m] = colour.get(models[m]["baseline_of"], "grey")
    for k, m in enumerate(order):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(tasks):
            r = task_result(models, m, t)
            if r and r.ok:
                sc = r.score
                xs.append(i + (k - (len(order) - 1) / 2) * width)
                ys.append(sc.value)
                lo.append(max(0.0, sc.value - sc.ci["low"]))
                hi.append(max(0.0, sc.ci["high"] - sc.value))
        init = bool(models[m].get("baseline_of"))
        ax.bar(
            xs,
            ys,
            width=width,
            label=m,
            yerr=[lo, hi],
            capsize=2,
            color=colour[m],
            alpha=0.45 if init else 1.0,
            hatch="//" if init else None,
            edgecolor="white" if init else None,
        )
    for i, t in enumerate(tasks):
        ref = next((r for m in order if (r := task_result(models, m, t)) and r.ok), None)
        if ref:
            ax.hlines(ref.score.chance, i - 0.45, i + 0.45, colors="black", linestyles="dotted", linewidth=1)
    labels = []
    for t in tasks:
        ref = next((task_result(models, m, t) for m in order), None)
        labels.append(f"{t}\n({ref.score.metric if ref and ref.ok else ''})")
    ax.set_xticks(range(len(tasks)), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (95% interval; dotted: chance)")
    ax.set_title(f"encoder vs decoder, suite {results['suite']}")
    ax.legend(fontsize=8)
    _save_fig(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_dynamics(results: dict, path: str | os.PathLike) -> Path | None:
    """Metric against training tokens, one panel per task, one line per model (against the checkpoints
    in order, named by tag, when some token count is unknown: released tags without a tag listing)."""
    dyn = results.get("dynamics") or {}
    tasks = results.get("dynamics_tasks") or []
    if not any(dyn.values()) or not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    # x: training tokens when every point has a count; else the checkpoints in order, named by tag
    by_tokens = all(p.get("tokens") is not None for points in dyn.values() for p in points)
    order = [] if by_tokens else list(dict.fromkeys(p["tag"] for points in dyn.values() for p in points))
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        chance = None
        top = 0.0
        for m, points in dyn.items():
            pts = [
                (p["tokens"] if by_tokens else order.index(p["tag"]), r.score)
                for p in points
                if t in p["tasks"] and (r := TaskResult.from_dict(p["tasks"][t])).ok
            ]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [sc.value for _, sc in pts]
            lo = [sc.value - sc.ci["low"] for _, sc in pts]
            hi = [sc.ci["high"] - sc.value for _, sc in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=m)
            chance = pts[0][1].chance
            top = max(top, max(sc.ci["high"] for _, sc in pts))
        if chance is not None:
            ax.axhline(chance, color="black", linestyle="dotted", linewidth=1)
        ax.set_ylim(0, min(1.0, max(0.05, top * 1.15)))
        if by_tokens:
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.set_xlabel("training tokens", fontsize=8)
        else:
            ax.set_xticks(range(len(order)), order, fontsize=7, rotation=30)
            ax.set_xlabel("checkpoint (training tokens unknown)", fontsize=8)
        ax.set_title(t, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    against = "training tokens" if by_tokens else "checkpoint"
    fig.suptitle(f"metric against {against} (95% intervals; dotted: chance)", fontsize=10)
    fig.tight_layout()
    _save_fig(fig, Path(path))
    plt.close(fig)
    return Path(path)


def write_report(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """results.json, report.md and the plots into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_json(out / RESULTS_FILE, results)]
    written.append(plot_bars(results, out / BARS_FILE))
    dyn = plot_dynamics(results, out / DYNAMICS_FILE)
    if dyn:
        written.append(dyn)
    heldout = plot_heldout_loss(results, out / HELDOUT_FILE)
    if heldout:
        written.append(heldout)
    written.append(atomic_write_text(out / REPORT_FILE, render_markdown(results)))
    return written


# ------------------------------------------------------------------------------------ findings

FAMILY_NAMES = {
    "classification": "classification",
    "retrieval": "retrieval",
    "generation": "generation",
    "multiple_choice": "multiple choice",
}
REPRODUCED, CONTRADICTED, NOT_RESOLVED = "reproduced", "contradicted", "not resolved"


def _winner(p: dict | None, first: str, second: str) -> str | None:
    """Who a paired interval of first - second favours; None when it includes 0 (or there is none)."""
    if not p or p.get("diff") is None or math.isnan(p["diff"]):
        return None
    if p["low"] > 0:
        return first
    if p["high"] < 0:
        return second
    return None


def _outcome(expected_hits: list[str], opposite_hits: list[str]) -> str:
    if expected_hits and not opposite_hits:
        return REPRODUCED
    if opposite_hits and not expected_hits:
        return CONTRADICTED
    return NOT_RESOLVED


def family_findings(results: dict) -> dict[str, dict]:
    """Per task family (kind), from the pair's paired intervals only: the paper's winner, the tasks
    whose interval favours it or the other arch, and the outcome (reproduced: at least one task's
    interval favours the paper's winner and none the other; contradicted: the reverse; otherwise not
    resolved)."""
    models = results["models"]
    pair = results.get("pair", {})
    enc, dec = pair.get("encoder"), pair.get("decoder")
    if not (enc and dec):
        return {}
    out: dict[str, dict] = {}
    for t in results["tasks"]:
        r = task_result(models, enc, t) or task_result(models, dec, t)
        if r is None or r.kind not in PAPER_WINNER:
            continue
        expected = PAPER_WINNER[r.kind]
        f = out.setdefault(r.kind, {"paper": expected, "tasks": [], "expected": [], "opposite": []})
        f["tasks"].append(t)
        winner = _winner(pair.get("tasks", {}).get(t), "encoder", "decoder")
        if winner == expected:
            f["expected"].append(t)
        elif winner is not None:
            f["opposite"].append(t)
    for f in out.values():
        f["outcome"] = _outcome(f["expected"], f["opposite"])
    return out


def cross_findings(results: dict) -> dict[str, dict]:
    """Per cross-objective model, from its paired intervals against the native model of its arch:
    the tasks where it is behind / ahead, and the outcome against the paper (converted models stay
    behind the native ones)."""
    out = {}
    for label, rec in results["models"].items():
        vs = rec.get("vs_native")
        if not vs:
            continue
        behind = [t for t, p in vs.items() if _winner(p, "cross", "native") == "native"]
        ahead = [t for t, p in vs.items() if _winner(p, "cross", "native") == "cross"]
        out[label] = {"native": rec.get("cross_of"), "tasks": list(vs), "behind": behind, "ahead": ahead}
        out[label]["outcome"] = _outcome(behind, ahead)
    return out


def findings_lines(results: dict) -> list[str]:
    """The report's "Findings" section: per task family and per cross-objective model, whether the
    paper's direction was reproduced, contradicted or not resolved, from paired intervals only."""
    fam = family_findings(results)
    cross = cross_findings(results)
    if not fam and not cross:
        return []
    lines = [
        "## Findings (paired intervals only)",
        "",
        "A task counts for a side only when the paired 95% interval of its gap excludes 0. A family is "
        "*reproduced* when at least one of its tasks favours the paper's winner and none the other arch, "
        "*contradicted* in the reverse case, and *not resolved* otherwise (no task decided, or tasks disagree). "
        "These say which way this run's gaps point; the paper's findings are about 17M-1B parameters trained on "
        "2T tokens (see the scale note below).",
        "",
    ]
    if fam:
        lines += ["| family | paper | tasks | as in the paper | opposite | outcome |", "|---|---|---|---|---|---|"]
        for kind, f in fam.items():
            lines.append(
                f"| {FAMILY_NAMES.get(kind, kind)} | {f['paper']} ahead | {', '.join(f['tasks'])} "
                f"| {', '.join(f['expected']) or '-'} | {', '.join(f['opposite']) or '-'} | **{f['outcome']}** |"
            )
        lines.append("")
    if cross:
        lines += [
            "Cross-objective continuation (the paper: a model continued in the other objective stays behind "
            "the native model of that arch):",
            "",
            "| model | compared with | behind the native | ahead of it | outcome |",
            "|---|---|---|---|---|",
        ]
        for label, c in cross.items():
            lines.append(
                f"| {label} | {c['native']} | {', '.join(c['behind']) or '-'} | {', '.join(c['ahead']) or '-'} "
                f"| **{c['outcome']}** |"
            )
        lines.append("")
    return lines


# ------------------------------------------------------------------------------- held-out loss


def plot_heldout_loss(results: dict, path: str | os.PathLike) -> Path | None:
    """Both models' held-out loss (each in its own objective) against training tokens, from
    `results["heldout_loss"]` ({arch: [{tokens, loss, phase}]}, what `ettin demo` adds)."""
    series = {a: pts for a, pts in (results.get("heldout_loss") or {}).items() if pts}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arch, pts in series.items():
        objective = pts[0].get("objective") or ("MLM" if arch.startswith("encoder") else "CLM")
        ax.plot([p["tokens"] for p in pts], [p["loss"] for p in pts], marker="o", label=f"{arch} ({objective})")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats per predicted token)")
    ax.set_title("held-out loss over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_fig(fig, Path(path))
    plt.close(fig)
    return Path(path)


def heldout_lines(results: dict) -> list[str]:
    series = {a: pts for a, pts in (results.get("heldout_loss") or {}).items() if pts}
    if not series:
        return []
    lines = [
        "## Held-out loss over training",
        "",
        results.get("heldout_note")
        or "Each model's loss in its own objective on held-out text, measured during training.",
        "",
        f"![held-out loss]({HELDOUT_FILE})",
        "",
        "| model | tokens | loss |",
        "|---|---|---|",
    ]
    for arch, pts in series.items():
        for p in (pts[0], pts[-1]) if len(pts) > 1 else pts:
            lines.append(f"| {arch} | {_fmt_tokens(p['tokens'])} | {p['loss']:.3f} |")
    lines.append("")
    return lines
