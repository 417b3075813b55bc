"""What a comparison evaluates, decided before any model is loaded.

`plan_run(CompareRequest(run, out, ...))` reads a training run's folder (through `ettin.runs`) and
the recipes beside it (through `ettin.recipe`) and returns a `ComparePlan`: the members and the tag
each is evaluated at, cross-objective models and the native arch each is compared with, the
checkpoints for the dynamics plot, whether the random initialisations are added as baselines, and
the pretraining sources that overlap the tasks. Only folder listings, tag records, config.json and
recipe.yaml are read, so every discovery rule is testable without a model; `ettin.eval.runner`
executes the plan.

`plan_run` also plans a pair given as two models instead of a run (`CompareRequest(encoder=...,
decoder=..., revisions=[...])`): hub ids, folders of revisions, training runs of one model, each
resolved at every tag through `ettin.hf.resolve` (a hub tag is downloaded then). The tokens of a
released tag are derived by `released_tokens` (the mapping is documented there and in
docs/evaluation.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin import runs
from ettin.data.sources import HELDOUT_SUFFIX
from ettin.errors import EttinError
from ettin.eval.tasks import get_suite, get_task, resolve_tasks
from ettin.recipe import InitSection, Recipe, load_recipe

# Tasks of the dynamics plot (those of the run's tasks that are in this list).
DYNAMICS_TASKS = ("sst2", "wiki_retrieval", "arc_easy", "lambada")
DEFAULT_MAX_CHECKPOINTS = 4


@dataclass(frozen=True)
class Checkpoint:
    """The tag a member is evaluated at, as the report shows it (`init`: what a continuation started from)."""

    tag: str
    tokens: int
    step: int
    init: str | None = None


@dataclass
class Member:
    """One model of a comparison. `model`: a folder, or anything `load_eval_model` takes; `arch`:
    from its config.json (None for a model in memory until it is loaded)."""

    label: str
    model: Any
    arch: str | None = None
    checkpoint: Checkpoint | None = None
    cross_of: str | None = None  # a cross-objective model: the arch it was trained into


@dataclass(frozen=True)
class DynamicsPoint:
    """One checkpoint of the dynamics plot; `final` marks the tag the member itself is evaluated at."""

    model: Any
    tag: str
    tokens: int | None
    step: int | None
    final: bool = False

    def record(self) -> dict:
        return {"tag": self.tag, "tokens": self.tokens, "step": self.step}


@dataclass
class CompareRequest:
    """The arguments of `ettin compare`, as given (the CLI renders its reproduction line from these)."""

    run: str | os.PathLike | None
    out: str | os.PathLike
    suite: str = "quick"
    seed: int = 0
    tasks: Sequence[str] | str | None = None
    revision: str | None = None
    dynamics: bool = True
    max_checkpoints: int = DEFAULT_MAX_CHECKPOINTS
    dynamics_tasks: Sequence[str] | None = None
    limit: int | None = None
    baselines: bool = False
    cross: Sequence[str | os.PathLike] = ()
    find_cross: bool = True
    # A pair given as models (instead of `run`): hub ids or folders, and the tags of the dynamics
    encoder: str | os.PathLike | None = None
    decoder: str | os.PathLike | None = None
    revisions: Sequence[str] = ()


@dataclass
class ComparePlan:
    """Everything a comparison evaluates. `members` in report order (encoder, decoder, the others)."""

    suite: str
    seed: int
    tasks: list[str]
    members: list[Member]
    limit: int | None = None
    run_name: str = "models"
    dynamics: dict[str, list[DynamicsPoint]] = field(default_factory=dict)
    dynamics_tasks: list[str] = field(default_factory=list)
    dynamics_note: str | None = None
    baselines: bool = False
    pretraining_sources: list[str] = field(default_factory=list)
    request: CompareRequest | None = None  # set when the plan was discovered from a run folder
    tokens_note: str | None = None  # how the token counts were found, when they are not a run's own records

    def member(self, label: str) -> Member:
        return next(m for m in self.members if m.label == label)

    def pair(self) -> tuple[str | None, str | None]:
        """The labels of the pair whose gaps get paired intervals: the members labelled 'encoder' and
        'decoder' when they have those archs, else the first member of each arch."""
        archs = {m.label: m.arch for m in self.members}

        def pick(arch: str) -> str | None:
            if archs.get(arch) == arch:
                return arch
            return next((label for label, a in archs.items() if a == arch), None)

        return pick("encoder"), pick("decoder")

    def baseline_labels(self) -> dict[str, str]:
        """Member label -> label of its random initialisation (the pair's, with `baselines`)."""
        if not self.baselines:
            return {}
        return {label: f"{label}-init" for label in self.pair() if label is not None}

    def overlap(self) -> dict[str, list[str]]:
        """Task -> the pretraining sources that hold its texts."""
        out = {}
        for t in self.tasks:
            both = sorted(set(get_task(t).pretraining_overlap) & set(self.pretraining_sources))
            if both:
                out[t] = both
        return out


def dynamics_task_names(tasks: Sequence[str], wanted: Sequence[str] | None = None) -> list[str]:
    return [t for t in (wanted or DYNAMICS_TASKS) if t in tasks]


# ------------------------------------------------------------------------------------- recipes


def run_recipe(run_dir: str | os.PathLike) -> Recipe | None:
    """The recipe a run was trained from, or None when it has none that the schema reads (a folder
    that is not a run, or one from another version: discovery then goes without it)."""
    path = Path(run_dir) / runs.RECIPE_FILE
    if not path.is_file():
        return None
    try:
        return load_recipe(path)
    except EttinError:
        return None


def recipe_sources(run_dir: str | os.PathLike) -> list[str]:
    """The built-in sources a run's recipe names: prepared (`prepare.sources`) and mixed into its
    phases (and its held-out loss)."""
    r = run_recipe(run_dir)
    if r is None:
        return []
    found = set(r.prepare.sources)
    for spec in [p.data for p in r.phases] + ([r.eval.data] if r.eval.data else []):
        found.update(e["source"] for e in spec.get("mixture", []))
    # a built-in corpus' held-out part counts only where a phase trains on it
    trained = {e["source"] for p in r.phases for e in p.data.get("mixture", [])}
    return sorted(s for s in found if not s.endswith(HELDOUT_SUFFIX) or s in trained)


def _init_of(run_dir: Path) -> InitSection:
    r = run_recipe(run_dir)
    return r.init if r is not None else InitSection()


# ------------------------------------------------------------------------------------ discovery


def _is_model(path: Path) -> bool:
    return runs.is_model_run(path) or runs.is_model_dir(path)


def discover_run(run_dir: str | os.PathLike) -> dict[str, Path]:
    """The models of a training run: label -> model folder or model run (encoder, decoder, then the others)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise EttinError(
            "no such run folder" if not run.exists() else "is not a folder",
            path=run,
            fix="give the folder `ettin train` wrote (it holds encoder/ and decoder/)",
        )
    if _is_model(run):
        raise EttinError(
            "is a single model, not a run of a pair",
            path=run,
            fix="give the run folder that holds encoder/ and decoder/, or use `ettin eval` for one model",
        )
    found = {sub.name: sub for sub in sorted(p for p in run.iterdir() if p.is_dir()) if _is_model(sub)}
    order = [k for k in runs.ARCH_DIRS if k in found] + [k for k in found if k not in runs.ARCH_DIRS]
    if not found:
        raise EttinError(
            "holds no models (no subfolder with hf/ checkpoints or config.json)",
            path=run,
            fix="train a pair first (`ettin train`), or point at the run's folder",
        )
    return {k: found[k] for k in order}


def _cross_member(path: Path) -> tuple[Path, InitSection]:
    """A cross-objective model given as a run folder, a model's run folder or a model folder:
    (the model run or folder, what its recipe says it started from)."""
    path = Path(path)
    if _is_model(path):
        return path, _init_of(path.parent)
    members = [p for p in sorted(path.iterdir()) if p.is_dir() and runs.is_model_run(p)] if path.is_dir() else []
    if len(members) != 1:
        raise EttinError(
            "is not a cross-objective model (expected one model folder, a run of one, or a model's run)",
            path=path,
            field="cross",
            fix="give e.g. runs/demo/cross-enc2dec or runs/demo/cross-enc2dec/decoder",
        )
    return members[0], _init_of(path)


def find_cross_runs(run_dir: str | os.PathLike) -> list[Path]:
    """Runs beside `run_dir` whose recipe starts from one of its models (`init.path`): the pair's
    cross-objective continuations."""
    run = Path(run_dir).resolve()
    found = []
    for sib in sorted(p for p in run.parent.iterdir() if p.is_dir() and p.resolve() != run):
        init = _init_of(sib).path
        if not init:
            continue
        target = Path(init)
        parts = target.parts
        same = (target.is_absolute() and target.resolve().parent == run) or (
            len(parts) >= 2 and parts[-2] == run.name and (run / parts[-1]).is_dir()
        )
        if same:
            found.append(sib)
    return found


def _arch(model_dir: Path) -> str:
    from ettin import hf

    return hf.read_config(Path(model_dir)).arch


def pick_tags(tags: list, k: int) -> list:
    """At most `k` of `tags`, evenly spread, the first and the last always kept (the last alone for k=1)."""
    if len(tags) <= k:
        return list(tags)
    idx = sorted({round(i * (len(tags) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(tags) - 1]
    return [tags[i] for i in idx]


def _evaluated_tag(model_run: Path, model_dir: Path) -> tuple[list[runs.TagInfo], runs.TagInfo | None]:
    tags = runs.exported_tags(model_run)
    return tags, next((t for t in tags if t.tag == model_dir.name), None)


def plan_run(request: CompareRequest) -> ComparePlan:
    """The plan of `ettin compare`: EttinError (before any model is loaded) for a folder that is not
    a run of a pair, an unknown task or suite, or a revision that some member lacks. A request with
    `encoder`/`decoder` is planned by `plan_models`."""
    if request.encoder is not None or request.decoder is not None or request.revisions:
        return plan_models(request)
    get_suite(request.suite)
    names = resolve_tasks(request.tasks, request.suite)
    if request.run is None:
        raise EttinError(
            "nothing to compare", fix="give a run folder (RUN), or two models with --encoder and --decoder"
        )
    run_dir = Path(request.run)
    found = discover_run(run_dir)
    members: list[Member] = []
    history: dict[str, list[runs.TagInfo]] = {}
    for label, path in found.items():
        checkpoint = None
        if runs.is_model_run(path):
            model_dir = runs.resolve_revision(path, request.revision)  # lists the tags if there is no such one
            tags, chosen = _evaluated_tag(path, model_dir)
            if chosen is not None:
                checkpoint = Checkpoint(chosen.tag, chosen.tokens, chosen.step)
                history[label] = [t for t in tags if t.step <= chosen.step]
        else:
            if request.revision is not None:
                raise EttinError(
                    f"is a plain model folder, so --revision {request.revision} does not apply",
                    path=path,
                    field="revision",
                    fix="drop --revision, or give runs whose models have checkpoints",
                )
            model_dir = path
        members.append(Member(label, model_dir, _arch(model_dir), checkpoint))
    cross_paths = [Path(c) for c in request.cross]
    if request.find_cross:
        given = {c.resolve() for c in cross_paths}
        cross_paths += [p for p in find_cross_runs(run_dir) if p.resolve() not in given]
    for c in cross_paths:
        member, init = _cross_member(c)
        model_dir = runs.resolve_revision(member) if runs.is_model_run(member) else member
        arch = _arch(model_dir)
        source = Path(init.path).name if init.path else "other"
        label = f"{source}-to-{arch}" if source in runs.ARCH_DIRS and source != arch else c.name
        while any(m.label == label for m in members):
            label += "+"
        checkpoint = None
        if runs.is_model_run(member):
            _, chosen = _evaluated_tag(member, Path(model_dir))
            if chosen is not None:
                started = f"{init.path}" + (f"@{init.revision}" if init.revision else "")
                checkpoint = Checkpoint(chosen.tag, chosen.tokens, chosen.step, init=started)
        members.append(Member(label, model_dir, arch, checkpoint, cross_of=arch))
    archs = [m.arch for m in members]
    if "encoder" not in archs or "decoder" not in archs:
        have = ", ".join(f"{m.label} ({m.arch})" for m in members)
        raise EttinError(
            f"needs an encoder and a decoder to compare; found {have}",
            path=request.run,
            fix="train both members of the pair, or use `ettin eval` for one model",
        )
    dynamics: dict[str, list[DynamicsPoint]] = {}
    note = None
    if request.dynamics:
        for label in runs.ARCH_DIRS:
            tags = history.get(label, [])
            if len(tags) < 2:
                continue
            dynamics[label] = [
                DynamicsPoint(found[label] / runs.HF_DIR / t.tag, t.tag, t.tokens, t.step, final=t is tags[-1])
                for t in pick_tags(tags, request.max_checkpoints)
            ]
        if not dynamics:
            note = "The run has fewer than two exported checkpoints per model: no training dynamics to plot."
    return ComparePlan(
        suite=request.suite,
        seed=request.seed,
        tasks=names,
        members=members,
        limit=request.limit,
        run_name=run_dir.resolve().name,
        dynamics=dynamics,
        dynamics_tasks=dynamics_task_names(names, request.dynamics_tasks),
        dynamics_note=note,
        baselines=request.baselines,
        pretraining_sources=recipe_sources(run_dir),
        request=request,
    )


# ---------------------------------------------------------------------------- a pair of models

# The released suite's tags (JHU-CLSP/ettin-encoder-vs-decoder README, "Accessing Training
# Checkpoints"): step{N} in pretraining, ext{N} in extension, decay{N} in decay, N the optimizer step
# counted from the start of the phase (e.g. step599525 near the end of pretraining, ext1000, decay100),
# `main` the final model. Phase lengths in tokens, from ettin-spec.md section 5 and the released
# configs (standard/*/prolong_decay: decay 50B; the model cards say 100B); the 1b configs
# (standard/huge) make extension and decay a third as long.
RELEASED_PHASES: tuple[tuple[str, int], ...] = (
    ("step", 1_700_000_000_000),
    ("ext", 250_000_000_000),
    ("decay", 50_000_000_000),
)
RELEASED_PHASES_1B: tuple[tuple[str, int], ...] = (
    ("step", 1_700_000_000_000),
    ("ext", 83_333_333_333),
    ("decay", 16_666_666_667),
)
_RELEASED_TAG = re.compile(r"^(step|ext|decay)([0-9]+)$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")  # a commit is not in a listing of tags and branches: the hub answers


def released_phases(config) -> tuple[tuple[str, int], ...]:
    """The phase lengths of the released model with this shape (1b: its own; every other size: the paper's)."""
    from ettin.config import SIZES

    big = SIZES["1b"]
    is_1b = (config.num_hidden_layers, config.hidden_size) == (big.num_hidden_layers, big.hidden_size)
    return RELEASED_PHASES_1B if is_1b else RELEASED_PHASES


def released_tokens(
    tag: str, listing: Sequence[str] | None, phases: tuple[tuple[str, int], ...] = RELEASED_PHASES
) -> tuple[int | None, bool]:
    """Tokens seen at a released tag, and whether the count is exact: (None, False) when it cannot be known.

    - `step0`, `ext0`, `decay0`: exact, the sum of the earlier phases' lengths (0, 1.7T, 1.95T).
    - `{prefix}{N}`, N > 0: the phase's start plus its length x N / M, M the largest step of that phase
      in `listing`, the repository's complete tag list (a hub repository's), when the phase is complete
      in it (a later phase has tags, or it is the last phase). An estimate: tokens per step vary within
      a phase (unpadded batches; the batch-size warmup of pretraining), so it is linear in steps, not exact.
    - anything else (`main`, other names, no complete listing): unknown.
    """
    m = _RELEASED_TAG.match(tag)
    if not m:
        return None, False
    prefix, n = m.group(1), int(m.group(2))
    names = [p for p, _ in phases]
    i = names.index(prefix)
    start = sum(length for _, length in phases[:i])
    if n == 0:
        return start, True
    if listing is None:
        return None, False
    steps: dict[str, int] = {}
    for t in listing:
        mt = _RELEASED_TAG.match(t)
        if mt:
            steps[mt.group(1)] = max(steps.get(mt.group(1), 0), int(mt.group(2)))
    last = steps.get(prefix, 0)
    complete = i == len(phases) - 1 or any(p in steps for p in names[i + 1 :])
    if not complete or last < n:
        return None, False
    return start + round(phases[i][1] * n / last), False


TOKENS_NOTE = (
    "Tokens of the released tags: exact at the start of each phase (step0 = 0, ext0 = 1.7T, decay0 = 1.95T); "
    "other tags are estimates, the phase's start plus its length (1.7T, 250B, 50B; 1b: 1.7T, 83.3B, 16.7B) "
    "times N over the phase's last step in the repository's tag list; unknown where that list is not "
    "available (a local folder of revisions, no network) or for names such as main."
)


def _model_tags(label: str, model, tags: list[str | None]) -> tuple[dict, list[str] | None]:
    """Every tag of one model resolved to a local folder (a hub tag downloaded), after checking all of
    them against the listing so that a missing tag fails before anything is fetched."""
    from ettin import hf

    listing = hf.list_revisions(model)
    if listing is not None:
        for tag in tags:
            if tag is not None and tag not in listing and not _COMMIT.match(tag):
                from ettin.hf.loading import shown_revisions

                raise EttinError(
                    f"the {label} has no revision '{tag}'", path=model, field="revisions", fix=shown_revisions(listing)
                )
    return {tag: Path(hf.resolve(model, tag)) for tag in tags}, listing


def _tag_tokens(folder: Path, tag: str | None, listing, config) -> tuple[int | None, int | None, bool]:
    """(tokens, step, exact) of a tag: a training run's own record, else the released mapping."""
    record = _tag_record_of(folder)
    if record is not None:
        return record.tokens, record.step, True
    if tag is None:
        return None, None, False
    tokens, exact = released_tokens(tag, listing, released_phases(config))
    return tokens, None, exact


def _tag_record_of(folder: Path) -> runs.TagInfo | None:
    """The record of an ettin training run's tag (`hf/<tag>` inside a model run), else None."""
    if folder.parent.name != runs.HF_DIR or not runs.is_model_run(folder.parent.parent):
        return None
    return next((t for t in runs.exported_tags(folder.parent.parent) if t.tag == folder.name), None)


def plan_models(request: CompareRequest) -> ComparePlan:
    """The plan of `ettin compare --encoder M --decoder M [--revisions a,b,...]`: each model evaluated
    at `revision` (default: the last of `revisions`, or its default revision), and with two or more
    revisions, each of them for the dynamics plot. EttinError before any model is loaded (and before a
    hub tag is downloaded, when the repository lists its tags) for a missing model, a tag a model lacks,
    a model of the wrong arch, an unknown task or suite."""
    from ettin import hf

    get_suite(request.suite)
    names = resolve_tasks(request.tasks, request.suite)
    if request.run is not None and request.encoder is None and request.decoder is None:
        raise EttinError(
            "--revisions is for models given by --encoder/--decoder",
            path=request.run,
            field="revisions",
            fix="for a run, --revision TAG picks the tag and --checkpoints N the dynamics' tags",
        )
    if request.run is not None:
        raise EttinError(
            "give either a run folder or --encoder/--decoder, not both",
            path=request.run,
            fix="drop RUN to compare the two models, or drop --encoder/--decoder",
        )
    for which in ("encoder", "decoder"):
        if getattr(request, which) is None:
            raise EttinError(f"--{which} is missing", field=which, fix="give both models: --encoder M --decoder M")
    revisions = [r.strip() for r in request.revisions if r.strip()]
    dup = sorted({r for r in revisions if revisions.count(r) > 1})
    if dup:
        raise EttinError(f"--revisions names {', '.join(dup)} twice", field="revisions", fix="name each tag once")
    evaluated = request.revision or (revisions[-1] if revisions else None)
    tags: list[str | None] = list(revisions) + ([evaluated] if evaluated not in revisions else [])
    members: list[Member] = []
    dynamics: dict[str, list[DynamicsPoint]] = {}
    estimated = False
    for label in ("encoder", "decoder"):
        model = getattr(request, label)
        folders, listing = _model_tags(label, model, tags)
        arch = _arch(folders[evaluated])
        if arch != label:
            raise EttinError(
                f"is a{'n' if arch == 'encoder' else ''} {arch}, given as --{label}",
                path=model,
                field=label,
                fix="swap --encoder and --decoder",
            )
        config = hf.read_config(folders[evaluated])
        # only a hub repository's listing is known to be complete (a local folder holds what was fetched)
        complete = listing if hf.loading.is_hub_id(str(model)) else None
        marks = {t: _tag_tokens(folders[t], t, complete, config) for t in tags}
        estimated |= any(not exact for tokens, _, exact in marks.values() if tokens is not None) or any(
            tokens is None for tokens, _, _ in marks.values()
        )
        tokens, step, _ = marks[evaluated]
        record = _tag_record_of(folders[evaluated])
        tag = record.tag if record is not None else evaluated
        if tag is None and hf.loading.is_hub_id(str(model)):
            tag = hf.loading.DEFAULT_REVISION  # the hub's default branch: the final model
        checkpoint = Checkpoint(tag, tokens, step) if tag is not None else None
        members.append(Member(label, folders[evaluated], arch, checkpoint))
        if request.dynamics and len(revisions) >= 2:
            dynamics[label] = [
                DynamicsPoint(folders[t], t, marks[t][0], marks[t][1], final=t == evaluated) for t in revisions
            ]
    for c in request.cross:
        member, init = _cross_member(Path(c))
        model_dir = runs.resolve_revision(member) if runs.is_model_run(member) else member
        arch = _arch(model_dir)
        label = Path(c).name
        while any(m.label == label for m in members):
            label += "+"
        members.append(Member(label, model_dir, arch, None, cross_of=arch))
    note = None
    if request.dynamics and len(revisions) < 2:
        note = "Fewer than two revisions were given (--revisions): no training dynamics to plot."
    return ComparePlan(
        suite=request.suite,
        seed=request.seed,
        tasks=names,
        members=members,
        limit=request.limit,
        run_name=f"{request.encoder} and {request.decoder}",
        dynamics=dynamics,
        dynamics_tasks=dynamics_task_names(names, request.dynamics_tasks),
        dynamics_note=note,
        baselines=request.baselines,
        pretraining_sources=[],
        request=request,
        tokens_note=TOKENS_NOTE if estimated else None,
    )
