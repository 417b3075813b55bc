"""The main job: a CPU pair from nothing to a report, with what each step wrote.

tokenizer -> prepared shards -> the pair trained through all three phases (held-out loss of both
measured as they train) -> each final model continued in the other objective (the shipped demo cross
recipes) -> all exported to Hugging Face -> the pair loaded back with transformers (and checked against
ettin) -> everything evaluated on the demo suite -> report with findings from paired intervals. Every
step is the library call the matching `ettin` command makes, and every step is idempotent, so an
interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ettin.errors import EttinError

if TYPE_CHECKING:
    from ettin.eval.plan import ComparePlan

DEMO_RECIPE = "demo"
# The cross-objective continuations: (recipe, the pair's model it starts from, run folder name).
CROSS_RECIPES = (
    ("cross-enc2dec-demo", "encoder", "cross-enc2dec"),
    ("cross-dec2enc-demo", "decoder", "cross-dec2enc"),
)
DEMO_SUITE = "demo"


def recipe_path(name: str = DEMO_RECIPE) -> Path:
    """A shipped recipe by name (package data, so an installed ettin runs the demo from any folder)."""
    from ettin.recipe import resolve_recipe

    return resolve_recipe(name)


@dataclass
class DemoResult:
    out: Path
    seconds: dict[str, float] = field(default_factory=dict)
    written: list[tuple[str, Path]] = field(default_factory=list)
    train_stats: list = field(default_factory=list)
    hf_check: dict[str, dict] = field(default_factory=dict)
    results: dict | None = None
    cross_stats: list = field(default_factory=list)


def _step(result: DemoResult, name: str, log: Callable[[str], None]):
    class _Timer:
        def __enter__(self):
            log(f"[bold]== {name}[/bold]")
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            result.seconds[name] = time.perf_counter() - self.t0

    return _Timer()


def check_with_transformers(model_dir: Path, arch: str, text: str) -> dict:
    """Load an export with transformers' Auto classes and compare its logits with ettin's on `text`."""
    import torch
    import transformers

    from ettin import hf

    tok = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    auto = transformers.AutoModelForMaskedLM if arch == "encoder" else transformers.AutoModelForCausalLM
    theirs = auto.from_pretrained(model_dir, attn_implementation="sdpa", trust_remote_code=False).eval()
    ours = hf.load_dir(model_dir).eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        a = theirs(**enc).logits
        b = ours(enc["input_ids"], enc["attention_mask"]).logits
    check = {
        "class": type(theirs).__name__,
        "tokens": int(enc["input_ids"].shape[1]),
        "max_abs_diff": float((a - b).abs().max()),
    }
    if arch == "decoder":
        prompt = tok("The history of", return_tensors="pt", add_special_tokens=False)
        ids = torch.cat([torch.tensor([[tok.cls_token_id]]), prompt["input_ids"]], 1)
        out = theirs.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        check["sample"] = tok.decode(out[0, 1:], skip_special_tokens=True)
        check["generate_matches_ettin"] = bool(
            torch.equal(out, ours.generate(ids, max_new_tokens=12)[:, : out.shape[1]])
        )
    else:
        masked = tok(f"The capital of France is {tok.mask_token}.", return_tensors="pt")
        with torch.no_grad():
            logits = theirs(**masked).logits[0]
        where = int((masked["input_ids"][0] == tok.mask_token_id).nonzero()[0])
        top = logits[where].topk(5).indices.tolist()
        check["sample"] = "[MASK] -> " + ", ".join(repr(tok.decode([i]).strip()) for i in top)
    return check


def heldout_losses(runs_by_label: dict[str, tuple[Path, Path | None, str]]) -> dict[str, list[dict]]:
    """label -> [{tokens, loss, phase, objective}] from each model run's metrics.jsonl (held-out rows);
    `runs_by_label[label] = (model run folder, the model run it started from or None, its objective)`:
    a continuation's tokens count on from the last step of the model it started from."""
    from ettin.train.metrics import read_metrics

    out: dict[str, list[dict]] = {}
    for label, (model_run, started_from, objective) in runs_by_label.items():
        rows = [r for r in read_metrics(model_run) if r.get("kind") == "eval" and r.get("eval_loss") is not None]
        if not rows:
            continue
        offset = max((int(r.get("tokens") or 0) for r in read_metrics(started_from)), default=0) if started_from else 0
        out[label] = [
            {
                "tokens": int(r["tokens"]) + offset,
                "loss": float(r["eval_loss"]),
                "phase": r.get("phase"),
                "objective": objective.upper(),
            }
            for r in rows
        ]
    return out


def run_demo(
    out: str | Path = "runs/demo",
    *,
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    suite: str = DEMO_SUITE,
    tasks: list[str] | None = None,
    cross: bool = True,
    cross_overrides: list[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    eval_progress=None,
    render_command: Callable[[ComparePlan], str] | None = None,
) -> DemoResult:
    """`render_command`: the line the report gives to reproduce the evaluation (the CLI passes its own).
    `cross`: continue each final model in the other objective (`CROSS_RECIPES`, with `cross_overrides`)."""
    from ettin import commands, runs
    from ettin.eval import report
    from ettin.eval.plan import CompareRequest, plan_run
    from ettin.eval.runner import run_plan
    from ettin.recipe import load_recipe
    from ettin.train.trainer import TrainOptions, train

    out = Path(out)
    result = DemoResult(out=out)
    run_dir = out / "pair"
    sets = [f"tokenizer={out / 'tokenizer'}", f"data_dir={out / 'data'}", *(overrides or [])]
    r = load_recipe(recipe or recipe_path(), sets)

    with _step(result, "train the pair (tokenizer, data, three phases)", log):
        resume = (run_dir / runs.RECIPE_FILE).is_file()
        if resume:
            log(f"continuing the run in {run_dir} (the demo is idempotent)")
        trained = train(r, TrainOptions(out=run_dir, resume=resume, progress=progress, log=log))
        result.train_stats = trained.stats
        if not trained.finished:
            raise EttinError(
                "training stopped before the end of the recipe",
                path=run_dir,
                fix=f"run `ettin demo --out {out}` again to continue",
            )
    result.written += [("tokenizer", Path(r.tokenizer)), ("prepared data", Path(r.data_dir)), ("training run", run_dir)]

    heldout_runs: dict[str, tuple[Path, Path | None, str]] = {
        "encoder": (run_dir / "encoder", None, r.objective.encoder),
        "decoder": (run_dir / "decoder", None, r.objective.decoder),
    }
    if cross:
        with _step(result, "continue each in the other objective (cross-objective)", log):
            for name, start, folder in CROSS_RECIPES:
                cross_dir = out / folder
                sets = [
                    f"tokenizer={out / 'tokenizer'}",
                    f"data_dir={out / 'data'}",
                    f"init.path={run_dir / start}",
                    *(cross_overrides or []),
                ]
                cr = load_recipe(recipe_path(name), sets)
                resume = (cross_dir / runs.RECIPE_FILE).is_file()
                done = train(cr, TrainOptions(out=cross_dir, resume=resume, progress=progress, log=log))
                result.cross_stats += done.stats
                if not done.finished:
                    raise EttinError(
                        "cross-objective training stopped before the end of its recipe",
                        path=cross_dir,
                        fix="run `make demo` again to continue",
                    )
                label = f"{start}-to-{cr.arch}"
                heldout_runs[label] = (cross_dir / cr.arch, run_dir / start, getattr(cr.objective, cr.arch))
                result.written.append((f"{label} run", cross_dir))

    exports = {}
    with _step(result, "export both to Hugging Face", log):
        for arch in ("encoder", "decoder"):
            target = out / f"{arch}-hf"
            commands.export(run_dir / arch, target, overwrite=True)
            exports[arch] = target
            result.written.append((f"{arch} (Hugging Face)", target))
            log(f"{arch}: {target}")

    with _step(result, "load both back with transformers", log):
        text = "Paired encoders and decoders share one recipe and one stream of data."
        for arch, target in exports.items():
            check = check_with_transformers(target, arch, text)
            result.hf_check[arch] = check
            log(f"{arch}: {check['class']} max |logits - ettin| = {check['max_abs_diff']:.2e}; {check['sample']}")

    with _step(result, f"evaluate every model on the {suite} suite and write the report", log):
        # no per-checkpoint task scores: the held-out loss over training is the demo's dynamics view
        request = CompareRequest(
            run_dir, out, suite, r.seed, tasks=tasks, limit=limit, dynamics=False, find_cross=cross
        )
        plan = plan_run(request)
        command = render_command(plan) if render_command else None
        results = run_plan(plan, out, command=command, progress=eval_progress)
        results["heldout_loss"] = heldout_losses(heldout_runs)
        if results["heldout_loss"]:
            sources = ", ".join(e["source"] for e in r.eval.data.get("mixture", [])) if r.eval.data else ""
            results["heldout_note"] = (
                f"Each model's loss in its own training objective (MLM and MNTP masking {r.eval.mask_rate:.0%} of "
                f"tokens, CLM) on the same {r.eval.sequences} held-out sequences ({sources}: documents no training "
                "phase reads), measured during training; the cross-objective continuations start where the pair "
                "ended. MNTP (masked next-token prediction, the decoder-to-encoder continuation) predicts a masked "
                "token at the position before it, so its loss is not on MLM's scale."
            )
        results["files"] = [str(p) for p in report.write_report(results, out)]
        result.results = results
    for name in ("report.md", "results.json"):
        result.written.append((name, out / name))
    result.written += [(p.name, p) for p in sorted(out.glob("*.png"))]
    return result
