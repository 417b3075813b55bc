"""Everything before the first step: the run folder, the assets, the models (built, wrapped, with their
optimizers), the resume point and what a crash may have left (leftover writes, tags past the resumed
step, a missing export)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ettin import runs
from ettin.errors import EttinError
from ettin.lock import LOCK_FILE, FolderLock
from ettin.recipe import Recipe, diff_recipes, load_recipe, save_recipe
from ettin.train import checkpoint as ck
from ettin.train.checkpointer import write_export
from ettin.train.context import Member, RunContext
from ettin.train.distributed import DistContext, choose_strategy, load_full_state, wrap_model
from ettin.train.guards import DataOrderMismatch
from ettin.train.metrics import MetricsLog
from ettin.train.optim import build_optimizer
from ettin.train.state import PAIR_FIELDS, TrainState

# Fields that do not change what is trained: a resume may change them without --force.
RESUME_NEUTRAL = ("distributed.", "checkpoint.keep_last", "checkpoint.export_hf")


def prepare_run_dir(recipe: Recipe, out: Path, *, resume: bool, force: bool, log=print) -> None:
    """Refuse a folder that holds something else; on resume, refuse a changed recipe unless forced."""
    saved_path = out / runs.RECIPE_FILE
    if resume:
        if not saved_path.is_file():
            raise EttinError(
                "holds no run to resume (no recipe.yaml)",
                path=out,
                fix="start it without --resume, or give the --out of an earlier `ettin train`",
            )
        saved = load_recipe(saved_path)
        changes = diff_recipes(saved, recipe)
        neutral = [c for c in changes if c.startswith(RESUME_NEUTRAL)]
        changes = [c for c in changes if c not in neutral]
        if neutral:
            log(f"resuming with: {'; '.join(neutral)}")
        if changes and not force:
            shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
            raise EttinError(
                f"the recipe differs from the one the run started with: {shown}",
                path=saved_path,
                fix="resume with the same recipe, or pass --force to continue with the new one",
            )
        if changes:
            log(f"continuing with a changed recipe (--force): {'; '.join(changes)}")
        return
    if saved_path.is_file():
        raise EttinError(
            "already holds a training run", path=out, fix="continue it with --resume, or choose a new --out"
        )
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise EttinError(
            "exists and is not an empty folder (and holds no ettin run)", path=out, fix="choose a new --out"
        )


def on_main(dist: DistContext, fn: Callable[[], None]) -> None:
    """Run `fn` on rank 0; a user error there stops every rank with the same message."""
    error = None
    if dist.is_main:
        try:
            fn()
        except EttinError as exc:
            if not dist.distributed:
                raise
            error = str(exc)
    error = dist.broadcast_object(error)
    if error is not None:
        raise EttinError(error)


def _resume_paths(recipe: Recipe, out: Path) -> dict[str, Path] | None:
    """The checkpoint folders a resume will load (read before anything is built or written)."""
    from types import SimpleNamespace

    return common_resume_step([SimpleNamespace(arch=a, dir=out / a) for a in recipe.archs()])  # type: ignore[list-item]


def check_saved_states(recipe: Recipe, out: Path, members: list[Member]) -> dict[str, ck.FullState]:
    """The full states a resume will load (weights, optimizer, rng, counters: `ck.load_checkpoint`), the
    optimizer states checked against optimizers built over the new models as `load_resume` checks them
    later. Run before a `--resume --force` saves its recipe, so a refused resume leaves the run as it was;
    the states read are returned for `load_resume`, which then reads no file again."""
    paths = _resume_paths(recipe, out)
    states = {}
    for m in members if paths else []:
        st = states[m.arch] = ck.load_checkpoint(paths[m.arch])
        ck.check_optimizer_state(
            st.path / ck.OPTIMIZER_FILE,
            st.optimizer,
            m.model,
            build_optimizer(m.model, recipe.optimizer),
            stepped=st.trainer.step > st.trainer.skips,
        )
    return states


def check_resume_state(recipe: Recipe, out: Path, paths: dict[str, Path]) -> dict[str, TrainState]:
    """Every checkpoint a resume will load, checked against the recipe: its phase, its data position and
    the data-order parts that must cover its steps. Reads only the small files."""
    from ettin.data.order import ORDER_DIR, order_coverage_gap

    states = {}
    for arch, path in paths.items():
        st = ck.read_trainer_state(path)
        st.path = path / runs.STATE_FILE  # type: ignore[attr-defined]  (for check_phases' messages)
        where = path / runs.STATE_FILE
        if st.phase >= len(recipe.phases) or recipe.phases[st.phase].name != st.phase_name:
            names = ", ".join(f"{i}={p.name}" for i, p in enumerate(recipe.phases))
            raise EttinError(
                f"phase {st.phase} ('{st.phase_name}') is not a phase of the recipe ({names})",
                path=where,
                field="phase",
                fix=ck.DAMAGED_FIX,
            )
        if st.phase_step > st.step or st.phase_tokens > st.tokens or (st.step == 0) != (st.tokens == 0):
            raise EttinError(
                f"the counters do not fit together (step {st.step}, phase_step {st.phase_step}, tokens {st.tokens}, "
                f"phase_tokens {st.phase_tokens})",
                path=where,
                field="phase_tokens",
                fix=ck.DAMAGED_FIX,
            )
        gap = order_coverage_gap(out / arch / ORDER_DIR, st.step)
        if gap:
            raise EttinError(
                f"the data order does not cover the checkpoint's {st.step} steps: {gap}",
                path=out / arch / ORDER_DIR,
                fix="restore the missing data_order parts from a copy; resuming would leave a hole in the "
                "record of what the model was trained on",
            )
        states[arch] = st
    return states


def check_phases(recipe: Recipe, fingerprint: str, resume: dict[str, TrainState] | None) -> None:
    """Open every phase's data stream now (min_tokens, damaged or foreign shards, the resumed position),
    so that a phase cannot fail when it opens after the run has been written."""
    from ettin.data.stream import PhaseBatches, TokenStream

    first = next(iter(resume.values())) if resume else None
    for i, phase in enumerate(recipe.phases):
        stream = TokenStream(
            phase.data_spec(), seed=recipe.seed, seq_len=phase.seq_len, tokenizer_fingerprint=fingerprint
        )
        if first is not None and first.phase == i:
            batches = PhaseBatches(stream, batch_size=phase.batch_size)
            where = getattr(first, "path", runs.STATE_FILE)
            try:
                batches.load_state_dict(first.data)
            except EttinError as exc:
                raise EttinError(str(exc), path=where) from None
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise EttinError(
                    f"the data position is not a data-stream state ({type(exc).__name__}: {exc})"[:300],
                    path=where,
                    field="data",
                    fix=ck.DAMAGED_FIX,
                ) from None


def build_run(recipe: Recipe, out: Path, dist: DistContext, *, resume: bool, force: bool, log) -> RunContext:
    """Check the run folder, make the assets, build, place and wrap the models with their optimizers.

    Every check comes before the first write into the run folder: the folder, the recipe against the
    saved one, the assets, every phase's data, the resumed state, the model's shapes and memory. The
    run folder is locked (ettin.lock) from the first check of a resume, or from the first write of a
    new run, until `release_run`. The recipe is saved only once the models exist."""
    from ettin.tokenizer import load_tokenizer, round_vocab_size, special_token_ids, tokenizer_fingerprint
    from ettin.train.assets import ensure_data, ensure_tokenizer
    from ettin.train.cross import check_fits, fresh_model, init_model, resolve_init

    r = recipe
    init_source = resolve_init(r)  # a missing tag or model fails here, before anything is written
    lock = FolderLock(out, what="run folder")

    def take_lock() -> None:
        lock.acquire()
        if lock.took_over:
            log(f"{out}: took over the lock of process {lock.took_over}, which ended without releasing it")

    def run_dir_and_assets() -> None:
        if resume and (out / runs.RECIPE_FILE).is_file():
            take_lock()  # before the saved recipe is read: nobody changes the run between check and write
        prepare_run_dir(r, out, resume=resume, force=force, log=log)
        ensure_data(r, ensure_tokenizer(r, log), log)

    def save_run_recipe() -> None:
        saved = out / runs.RECIPE_FILE
        if not lock.held:  # a new run: the folder and its lock are the first writes
            out.mkdir(parents=True, exist_ok=True)
            take_lock()
            prepare_run_dir(r, out, resume=resume, force=force, log=lambda *_: None)  # another start got here first?
        if resume and not force and saved.is_file():
            return  # the same recipe (prepare_run_dir refused any change): nothing to write
        if resume and force and saved.is_file():
            saved.replace(out / f"recipe.before-{int(time.time())}.yaml")
        save_recipe(r, saved)

    try:
        on_main(dist, run_dir_and_assets)
        tokenizer_dir = Path(r.tokenizer)
        tokenizer = load_tokenizer(tokenizer_dir)
        special_ids = special_token_ids(tokenizer)
        fingerprint = tokenizer_fingerprint(tokenizer)

        def preflight() -> None:
            paths = _resume_paths(r, out) if resume else None
            check_phases(r, fingerprint, check_resume_state(r, out, paths) if paths else None)

        on_main(dist, preflight)
        members = []
        for arch in r.archs():
            if init_source is not None:
                model, source = init_model(r, arch, init_source, None)
                if not resume:
                    at = f" at {r.init.revision}" if r.init.revision else ""
                    log(f"{arch}: starting from {r.init.path}{at} ({source}; weights only, a fresh optimizer)")
            else:
                model = fresh_model(r, arch, round_vocab_size(len(tokenizer)), special_ids)
            check_fits(model, r, tokenizer, tokenizer_dir)
            model.to(dist.device).train()
            objective = r.objective.encoder if arch == "encoder" else r.objective.decoder
            members.append(Member(arch, objective, out / arch, model, model, None))  # type: ignore[arg-type]
        preloaded: dict[str, ck.FullState] = {}
        if resume and force and (out / runs.RECIPE_FILE).is_file():
            # the one resume that rewrites recipe.yaml: the saved states must load and fit first
            on_main(dist, lambda: preloaded.update(check_saved_states(r, out, members)))
        on_main(dist, save_run_recipe)

        num_params = sum(p.numel() for p in members[0].model.parameters())
        strategy = choose_strategy(r.distributed.strategy, num_params, r.distributed.fsdp_min_params, dist.world_size)
        for m in members:
            m.wrapped = wrap_model(m.model, strategy, dist)
            m.optimizer = build_optimizer(m.wrapped, r.optimizer)
    except BaseException:
        lock.release()
        raise
    run = RunContext(
        r,
        dist,
        out,
        log,
        tokenizer_dir,
        fingerprint,
        special_ids,
        len(tokenizer),
        members,
        strategy,
        preloaded_states=preloaded,
    )
    run.lock = lock  # type: ignore[attr-defined]  (released by release_run)
    return run


def release_run(run: RunContext | None) -> None:
    """Drop the run folder's lock (the process's end drops it too, however it ends)."""
    lock = getattr(run, "lock", None)
    if lock is not None:
        lock.release()


def common_resume_step(members: list[Member]) -> dict[str, Path] | None:
    """The newest full state every model of the run has, at the same step."""
    per_arch = {
        m.arch: {t.step: m.dir / runs.STATE_DIR / t.tag for t in runs.list_tags(m.dir) if t.full_state} for m in members
    }
    if not any(per_arch.values()):
        return None
    if not all(per_arch.values()) and all(len(v) <= 1 for v in per_arch.values()):
        # a crash during the pair's first checkpoint: start over; the one tag written is dropped
        # as the abandoned future
        return None
    common = set.intersection(*(set(v) for v in per_arch.values()))
    if not common:
        shown = ", ".join(f"{a}: {sorted(v)[-1] if v else 'none'}" for a, v in per_arch.items())
        raise EttinError(
            f"the models of this pair have no checkpoint at a common step ({shown})",
            fix="resume each model on its own (--arch encoder / --arch decoder) from its own checkpoints",
        )
    step = max(common)
    return {a: v[step] for a, v in per_arch.items()}


# Optimizer group settings that come from the recipe (`build_optimizer`); torch's load_state_dict would
# put the checkpoint's back, so a `--resume --force` changing them would be silently ignored. The learning
# rate is set at every step anyway; `step` and the moments are the checkpoint's.
RECIPE_GROUP_KEYS = ("beta1", "beta2", "weight_decay", "decouple_lr", "max_lr")


def recipe_hyperparameters(optimizer, saved: dict, path: Path) -> list[dict]:
    """The recipe's values of RECIPE_GROUP_KEYS per group of the freshly built `optimizer`, to apply
    after the checkpoint is loaded. `eps` cannot change on resume (StableAdamW keeps eps^2 in each
    parameter's state), so a change is refused."""
    fresh = [{k: g[k] for k in RECIPE_GROUP_KEYS if k in g} for g in optimizer.param_groups]
    for i, (g, s) in enumerate(zip(optimizer.param_groups, saved.get("param_groups", []))):
        if "eps" in g and "eps" in s and s["eps"] != g["eps"]:
            raise EttinError(
                f"optimizer.eps changed from {s['eps']} to {g['eps']}, which a resumed optimizer cannot take "
                "(its per-parameter state holds eps^2)",
                path=path,
                field=f"param_groups.{i}.eps",
                fix="keep optimizer.eps, or start a new run from these weights (init.path) with a fresh optimizer",
            )
    return fresh


def load_resume(run: RunContext, paths: dict[str, Path]) -> dict[str, ck.FullState]:
    """Load every member's full state (weights, optimizer, its counters) and this rank's RNG.

    Returns arch -> FullState; the pair's states agree on PAIR_FIELDS or this raises."""
    pre = run.preloaded_states
    states = {
        arch: pre[arch] if arch in pre and pre[arch].path == p else ck.load_checkpoint(p) for arch, p in paths.items()
    }
    pre.clear()  # the states are loaded into the models below; keep no second copy
    first: TrainState = next(iter(states.values())).trainer
    for st in states.values():
        mismatch = [k for k in PAIR_FIELDS if getattr(st.trainer, k) != getattr(first, k)]
        if mismatch:
            raise DataOrderMismatch(
                f"the pair's checkpoints disagree at {st.path.name}: {', '.join(mismatch)} differ between models "
                "(the data order of the two models is no longer the same)",
                path=run.out,
                fix="resume each model on its own, or start the pair again",
            )
    for m in run.members:
        st = states[m.arch]
        ck.check_optimizer_state(
            st.path / ck.OPTIMIZER_FILE, st.optimizer, m.model, m.optimizer, stepped=st.trainer.step > st.trainer.skips
        )
        recipe_groups = recipe_hyperparameters(m.optimizer, st.optimizer, st.path / ck.OPTIMIZER_FILE)
        load_full_state(m.wrapped, m.optimizer, st.model, st.optimizer, run.strategy)
        for group, values in zip(m.optimizer.param_groups, recipe_groups):
            changed = {k: (group[k], v) for k, v in values.items() if group.get(k) != v}
            group.update(values)
            for k, (old, new) in changed.items():
                run.log(f"{m.arch}: optimizer {k} {old} -> {new} (the recipe's, over the checkpoint's)")
        m.order_chain = st.trainer.order_chain
        m.skips = st.trainer.skips
        m.last_loss = st.trainer.loss
    rng = states[run.members[0].arch].trainer.rng.get(run.dist.rank)
    if rng is not None:
        rng.restore()
    phases = run.recipe.phases
    run.log(
        f"resuming at step {first.step} ({first.tokens:,} tokens, phase "
        f"{phases[first.phase].name if first.phase < len(phases) else 'done'}) "
        f"from {', '.join(str(p) for p in paths.values())}"
    )
    return states


def open_run_files(run: RunContext, step: int, *, resumed: bool, tensorboard: bool) -> None:
    """On rank 0: metrics and data order opened at `step`; what a crash left behind cleaned up."""
    from ettin.data.order import ORDER_DIR, OrderWriter, plan_from_recipe

    plan = plan_from_recipe(run.recipe)  # plan.json: the order can be regenerated from the data and the seed
    for m in run.members:
        m.dir.mkdir(parents=True, exist_ok=True)
        m.metrics = MetricsLog(m.dir, resume_step=step if resumed else None, tensorboard=tensorboard)
        m.order = OrderWriter(m.dir / ORDER_DIR, plan=plan)
        m.order.truncate_after(step)
        ck.remove_leftovers(m.dir)
        removed = ck.drop_tags_after(m.dir, step)
        if removed:
            run.log(f"{m.arch}: dropped tags past the resumed step: {', '.join(removed)}")
        ck.apply_retention(m.dir, run.recipe.checkpoint.keep_last)  # a crash may have come before it ran
    record_launch(run, step, resumed=resumed)


LAUNCHES_FILE = "launches.jsonl"


def launch_record(run: RunContext, step: int, *, resumed: bool) -> dict:
    """What this launch ran on: the choices that change speed but not the trajectory."""
    import platform
    import time

    import torch

    from ettin import __version__, attention, omp

    device = run.dist.device
    dtype = torch.bfloat16 if run.recipe.precision == "bf16" else torch.float32
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": step,
        "resumed": resumed,
        "ettin": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "world_size": run.dist.world_size,
        "strategy": run.strategy,
        "attention_backend": attention.backend_for(device, dtype),
        "omp_wait_policy": str(omp.current()),
        "torch_threads": torch.get_num_threads(),
    }


def record_launch(run: RunContext, step: int, *, resumed: bool) -> None:
    """One line per launch in RUN/launches.jsonl (appended; a run resumed elsewhere shows both)."""
    import json

    line = json.dumps(launch_record(run, step, resumed=resumed)) + "\n"
    with open(run.out / LAUNCHES_FILE, "a", encoding="utf-8") as f:
        f.write(line)


def repair_missing_exports(run: RunContext, states: dict[str, ck.FullState]) -> None:
    """A crash between a full state and its HF export leaves the export missing; make it now."""
    if not run.recipe.checkpoint.export_hf:
        return
    for m in run.members:
        st = states[m.arch]
        tag = st.path.name
        if not (m.dir / runs.HF_DIR / tag / "config.json").is_file():
            phase = run.recipe.phases[st.trainer.phase]
            m.model.set_rope_theta(*phase.rope.for_arch(m.arch))  # the tag's phase, not the first
            write_export(run, m, tag, st.model, st.trainer)
