"""The trainer: one recipe, one data stream, one or two models.

A pair is the recipe applied twice to one stream: each global batch is drawn once, recorded in both
models' data orders, and given to the encoder (masked LM) and to the decoder (next token). The batch
hashes the two data orders return are compared at every step and the run stops if they ever differ.

Everything that decides a step is a pure function of (recipe, step, tokens seen): the batch (the
stream's position), its masking (`make_inputs` hashes seed, step and sequence index), the learning
rate and the dropout RNG (seeded from seed, arch, step and rank at the start of the step). So a run
resumed from a checkpoint continues bit for bit, and the encoder of a pair equals an encoder trained
alone on the same recipe. With several processes, each takes its contiguous slice of every
micro-batch, and the loss is normalised by the label tokens of the whole global batch.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ettin.errors import EttinError
from ettin.recipe import Phase, Recipe, diff_recipes, load_recipe, save_recipe
from ettin.train import checkpoint as ck
from ettin.train.distributed import (
    DistContext,
    choose_strategy,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    load_full_state,
    rank_slice,
    set_gradient_sync,
    wrap_model,
)
from ettin.train.metrics import MetricsLog, PhaseProgress
from ettin.train.optim import build_optimizer, set_lr
from ettin.train.schedule import lr_at

RECIPE_FILE = "recipe.yaml"
# Fields that do not change what is trained: a resume may change them without --force.
RESUME_NEUTRAL = ("distributed.", "checkpoint.keep_last", "checkpoint.export_hf")


class NonFiniteLoss(EttinError):
    exit_code = 3


class UnstableUpdate(EttinError):
    exit_code = 3


class DataOrderMismatch(EttinError):
    exit_code = 4


@dataclass
class TrainOptions:
    out: Path
    resume: bool = False
    force: bool = False
    progress: bool = True
    max_steps: int | None = None  # stop after this global step (an interruption on purpose)
    device: str | None = None
    tensorboard: bool = True
    threads: int | None = None  # torch CPU threads; on a busy shared CPU 1 is often several times faster
    log: Callable[[str], None] = print


@dataclass
class Member:
    """One model of the run and everything that belongs to it alone."""

    arch: str
    objective: str
    dir: Path
    model: nn.Module  # the EttinModel
    wrapped: nn.Module  # what forward/backward go through (DDP / FSDP2 / the model itself)
    optimizer: torch.optim.Optimizer
    metrics: MetricsLog | None = None
    order: Any = None  # ettin.data.order.OrderWriter on rank 0
    order_chain: str = ""  # running hash over every step's batch hash
    grad_norm: float = float("nan")  # of the last step
    skipped: str | None = None  # why the last step's update was skipped (guards), or None
    skips: int = 0  # skipped steps in a row
    last_loss: float = float("nan")
    phase_time: float = 0.0
    phase_tokens: int = 0


@dataclass
class PhaseStats:
    arch: str
    phase: str
    steps: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class TrainResult:
    out: Path
    step: int
    tokens: int
    finished: bool
    tags: list[str] = field(default_factory=list)
    stats: list[PhaseStats] = field(default_factory=list)
    seconds: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- helpers


def step_seed(seed: int, arch: str, step: int, rank: int) -> int:
    h = hashlib.sha256(f"{seed}/{arch}/{step}/{rank}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _chain(previous: str, batch_hash: str) -> str:
    return hashlib.sha256(f"{previous}:{batch_hash}".encode()).hexdigest()[:32]


def _rng_capture() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, np.int64))
    version, internal, gauss = random.getstate()
    return tensors, {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _rng_restore(tensors: dict[str, torch.Tensor], extra: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = extra["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = extra["python"]
    random.setstate((version, tuple(internal), gauss))


def _check_finite(losses: dict[str, float], step: int, phase: Phase, members: list[Member]) -> None:
    bad = {a: v for a, v in losses.items() if not math.isfinite(v)}
    if not bad:
        return
    parts = []
    for m in members:
        if m.arch in bad:
            last = ck.latest_full_state(m.dir)
            parts.append(f"{m.arch} loss is {bad[m.arch]}; last good checkpoint: {last if last else 'none yet'}")
    raise NonFiniteLoss(
        f"stopped at step {step} ({phase.name}): " + "; ".join(parts),
        fix="nothing was written for this step; lower the learning rate (--set optimizer.lr=...) "
        "and continue with --resume --force, or inspect the data",
    )


def _grad_norm(model: nn.Module) -> float:
    """Global L2 norm of the gradients (whole model, also when FSDP2 shards them)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _check_finite_weights(m: Member, step: int, phase: Phase, ctx: DistContext) -> None:
    """An update can make weights non-finite while the loss that produced it was finite: never save them.

    Every rank checks its own shard and all ranks agree on the verdict, so they stop together.
    """
    local = (p.to_local() if hasattr(p, "to_local") else p for p in m.model.parameters())
    bad = 0.0 if all(bool(torch.isfinite(t).all()) for t in local) else 1.0
    if ctx.all_reduce_sum([bad])[0] == 0.0:
        return
    last = ck.latest_full_state(m.dir)
    raise NonFiniteLoss(
        f"stopped at step {step} ({phase.name}): the {m.arch}'s weights hold NaN or inf, so checkpoint was not "
        f"written; last good checkpoint: {last if last else 'none yet'}",
        fix="lower the learning rate (--set optimizer.lr=...) and continue with --resume --force",
    )


# ----------------------------------------------------------------------------------------- run dir


def prepare_run_dir(recipe: Recipe, out: Path, *, resume: bool, force: bool, log=print) -> None:
    """Refuse a folder that holds something else; on resume, refuse a changed recipe unless forced."""
    saved_path = out / RECIPE_FILE
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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EttinError(
            "exists and is not an empty folder (and holds no ettin run)", path=out, fix="choose a new --out"
        )


def _common_resume_step(members: list[Member]) -> dict[str, Path] | None:
    """The newest full state every model of the run has, at the same step."""
    per_arch = {
        m.arch: {t.step: m.dir / ck.STATE_DIR / t.tag for t in ck.list_tags(m.dir) if t.full_state} for m in members
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


# ----------------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, recipe: Recipe, options: TrainOptions, ctx: DistContext | None = None):
        self.recipe = recipe
        self.opt = options
        self.out = Path(options.out)
        self.ctx = ctx or init_distributed(options.device)
        self.log = options.log if self.ctx.is_main else (lambda *_: None)
        self.device = self.ctx.device
        self.members: list[Member] = []
        self.step = 0
        self.tokens = 0
        self.phase_index = 0
        self.phase_step = 0
        self.phase_tokens = 0
        self.batches = None  # ettin.data.stream.PhaseBatches of the current phase
        self.strategy = "none"
        self.tags: list[str] = []
        self.stats: list[PhaseStats] = []
        self._eval_cache: dict[int, list] = {}
        self._resume_states: dict[str, ck.FullState] = {}
        self._resume_data: dict | None = None  # the data-stream position to continue from
        self._last_tokens = 0

    # ------------------------------------------------------------------ setup

    def _on_main(self, fn: Callable[[], None]) -> None:
        """Run `fn` on rank 0; a user error there stops every rank with the same message."""
        error = None
        if self.ctx.is_main:
            try:
                fn()
            except EttinError as exc:
                if not self.ctx.distributed:
                    raise
                error = str(exc)
        error = self.ctx.broadcast_object(error)
        if error is not None:
            raise EttinError(error)

    def setup(self) -> None:
        from ettin.tokenizer import load_tokenizer, round_vocab_size, special_token_ids, tokenizer_fingerprint
        from ettin.train.assets import ensure_data, ensure_tokenizer

        r, ctx = self.recipe, self.ctx
        if self.opt.threads is not None:
            torch.set_num_threads(max(1, self.opt.threads))

        def run_dir_and_assets() -> None:
            prepare_run_dir(r, self.out, resume=self.opt.resume, force=self.opt.force, log=self.log)
            ensure_data(r, ensure_tokenizer(r, self.log), self.log)

        def save_run_recipe() -> None:  # only once the models exist: a start that fails leaves no run behind
            if self.opt.resume and not self.opt.force and (self.out / RECIPE_FILE).is_file():
                return  # the same recipe (prepare_run_dir refused any change): nothing to write
            self.out.mkdir(parents=True, exist_ok=True)
            if self.opt.resume and self.opt.force and (self.out / RECIPE_FILE).is_file():
                (self.out / RECIPE_FILE).replace(self.out / f"recipe.before-{int(time.time())}.yaml")
            save_recipe(r, self.out / RECIPE_FILE)

        from ettin.train.cross import check_fits, fresh_model, init_model, resolve_init

        init_source = resolve_init(r)  # a missing tag or model fails here, before anything is written
        self._on_main(run_dir_and_assets)
        self.tokenizer_dir = Path(r.tokenizer)
        tokenizer = load_tokenizer(self.tokenizer_dir)
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.special_ids = special_token_ids(tokenizer)
        self.vocab_size = len(tokenizer)  # masking's random replacements: ids the tokenizer can produce
        vocab_size = round_vocab_size(len(tokenizer))

        for arch in r.archs():
            if init_source is not None:
                model, source = init_model(r, arch, init_source, None)
                if not self.opt.resume:
                    at = f" at {r.init.revision}" if r.init.revision else ""
                    self.log(f"{arch}: starting from {r.init.path}{at} ({source}; weights only, a fresh optimizer)")
            else:
                model = fresh_model(r, arch, vocab_size, self.special_ids)
            check_fits(model, r, tokenizer, self.tokenizer_dir)
            model.to(self.device).train()
            objective = r.objective.encoder if arch == "encoder" else r.objective.decoder
            self.members.append(Member(arch, objective, self.out / arch, model, model, None))  # type: ignore[arg-type]
        self._on_main(save_run_recipe)

        num_params = sum(p.numel() for p in self.members[0].model.parameters())
        self.strategy = choose_strategy(
            r.distributed.strategy, num_params, r.distributed.fsdp_min_params, ctx.world_size
        )
        for m in self.members:
            m.wrapped = wrap_model(m.model, self.strategy, ctx)
            m.optimizer = build_optimizer(m.wrapped, r.optimizer)

        resume_from = _common_resume_step(self.members) if self.opt.resume else None
        if resume_from:
            self._load_states(resume_from)
        elif self.opt.resume:
            self.log(f"{self.out}: no checkpoint yet, starting from the beginning")

        if ctx.is_main:
            from ettin.data.order import ORDER_DIR, OrderWriter, plan_from_recipe

            plan = plan_from_recipe(r)  # plan.json: the order can be regenerated from the data and the seed

            resumed = self.step if resume_from else None
            for m in self.members:
                m.dir.mkdir(parents=True, exist_ok=True)
                m.metrics = MetricsLog(m.dir, resume_step=resumed, tensorboard=self.opt.tensorboard)
                m.order = OrderWriter(m.dir / ORDER_DIR, plan=plan)
                m.order.truncate_after(self.step)
                ck.remove_leftovers(m.dir)
                removed = ck.drop_tags_after(m.dir, self.step)
                if removed:
                    self.log(f"{m.arch}: dropped tags past the resumed step: {', '.join(removed)}")
                ck.apply_retention(m.dir, self.recipe.checkpoint.keep_last)  # a crash may have come before it ran
            if resume_from:
                self._export_missing(resume_from)
        ctx.barrier()

    def _load_states(self, paths: dict[str, Path]) -> None:
        states = {arch: ck.load_checkpoint(p) for arch, p in paths.items()}
        first = next(iter(states.values())).trainer
        keys = ("step", "tokens", "phase", "phase_step", "phase_tokens", "data", "order_chain")
        for st in states.values():
            mismatch = [k for k in keys if st.trainer.get(k) != first.get(k)]
            if mismatch:
                raise DataOrderMismatch(
                    f"the pair's checkpoints disagree at {st.path.name}: {', '.join(mismatch)} differ between models "
                    "(the data order of the two models is no longer the same)",
                    path=self.out,
                    fix="resume each model on its own, or start the pair again",
                )
        for m in self.members:
            st = states[m.arch]
            load_full_state(m.wrapped, m.optimizer, st.model, st.optimizer, self.strategy)
            m.order_chain = st.trainer["order_chain"]
            m.skips = int(st.trainer.get("skips", 0))
            m.last_loss = float(st.trainer.get("loss", float("nan")))
        self.step, self.tokens = int(first["step"]), int(first["tokens"])
        self.phase_index, self.phase_step = int(first["phase"]), int(first["phase_step"])
        self.phase_tokens = int(first["phase_tokens"])
        self._resume_data = first["data"]
        rank_rng = first.get("rng", {}).get(f"rank{self.ctx.rank}")
        tensors = {
            k.split(".", 1)[1]: v
            for k, v in states[self.members[0].arch].rng.items()
            if k.startswith(f"rank{self.ctx.rank}.")
        }
        if rank_rng is not None and tensors:
            _rng_restore(tensors, rank_rng)
        self._resume_states = states
        self.log(
            f"resuming at step {self.step} ({self.tokens:,} tokens, phase "
            f"{self.recipe.phases[self.phase_index].name if self.phase_index < len(self.recipe.phases) else 'done'}) "
            f"from {', '.join(str(p) for p in paths.values())}"
        )

    def _export_missing(self, paths: dict[str, Path]) -> None:
        """A crash between a full state and its HF export leaves the export missing; make it now."""
        if not self.recipe.checkpoint.export_hf:
            return
        for m in self.members:
            tag = paths[m.arch].name
            if not (m.dir / ck.HF_DIR / tag / "config.json").is_file():
                st = self._resume_states[m.arch]
                phase = self.recipe.phases[int(st.trainer["phase"])]
                m.model.set_rope_theta(
                    phase.rope.global_theta, phase.rope.local_theta
                )  # the tag's phase, not the first
                ck.write_hf_export(
                    m.dir, tag, self._export_model(m, st.model), self._tag_info(st.trainer), self.tokenizer_dir
                )

    # ------------------------------------------------------------------ phases

    def _open_phase(self, index: int, resume_data: dict | None) -> None:
        from ettin.data.stream import PhaseBatches, TokenStream

        phase = self.recipe.phases[index]
        stream = TokenStream(
            phase.data_spec(), seed=self.recipe.seed, seq_len=phase.seq_len, tokenizer_fingerprint=self.fingerprint
        )
        self.batches = PhaseBatches(
            stream,
            batch_size=phase.batch_size,
            warmup_tokens=phase.batch_warmup_tokens,
            warmup_start=min(self.recipe.micro_batch_size, phase.batch_size),
        )
        if resume_data is not None:
            self.batches.load_state_dict(resume_data)
        for m in self.members:
            m.model.set_rope_theta(phase.rope.global_theta, phase.rope.local_theta)
            m.phase_time, m.phase_tokens = 0.0, 0
        self._phase_steps_at_open = self.phase_step

    def _close_phase_stats(self, phase: Phase) -> None:
        for m in self.members:
            self.stats.append(
                PhaseStats(
                    m.arch, phase.name, self.phase_step - self._phase_steps_at_open, m.phase_tokens, m.phase_time
                )
            )

    # ------------------------------------------------------------------ one step

    def _member_step(self, m: Member, samples: list, phase: Phase, lr: float) -> float:
        """Forward/backward over the micro-batches of this rank, then the optimizer step. Returns the loss."""
        from ettin.data.masking import make_inputs

        r, ctx = self.recipe, self.ctx
        torch.manual_seed(step_seed(r.seed, m.arch, self.step + 1, ctx.rank))
        mb = min(r.micro_batch_size, len(samples))
        pieces = []
        local_labels = 0
        for a in range(0, len(samples), mb):
            b = min(a + mb, len(samples))
            s, e = rank_slice(b - a, ctx.rank, ctx.world_size)
            if e > s:
                batch = make_inputs(
                    samples[a + s : a + e],
                    m.objective,
                    special_ids=self.special_ids,
                    vocab_size=self.vocab_size,
                    mask_rate=phase.mask_rate,
                    seed=r.seed,
                    step=self.step + 1,
                    first_index=a + s,
                )
                local_labels += batch.num_label_tokens
                pieces.append(batch)
            else:
                pieces.append(None)
        total_labels = ctx.all_reduce_sum([float(local_labels)])[0]
        scale = ctx.world_size / max(total_labels, 1.0)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=r.precision == "bf16")
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(pieces):
            with set_gradient_sync(m.wrapped, self.strategy, i == len(pieces) - 1):
                if batch is None or batch.num_label_tokens == 0:
                    # keeps every rank in the same collectives; contributes nothing
                    ids = torch.tensor([self.special_ids["cls_token_id"]] * 2, device=self.device)
                    cu = torch.tensor([0, 2], dtype=torch.int32, device=self.device)
                    with autocast:
                        out = m.wrapped(ids, cu_seqlens=cu, max_seqlen=2)
                    loss = out.logits.float().sum() * 0.0
                else:
                    batch = batch.to(self.device)
                    with autocast:
                        out = m.wrapped(
                            batch.input_ids,
                            cu_seqlens=batch.cu_seqlens,
                            max_seqlen=batch.max_seqlen,
                            labels=batch.labels,
                            return_logits=False,
                        )
                    part = out.loss.float() * batch.num_label_tokens
                    loss_sum += part.detach().double()
                    loss = part * scale
                loss.backward()
        total = ctx.all_reduce_sum([float(loss_sum)])[0]
        value = total / total_labels if total_labels else 0.0
        m.grad_norm = _grad_norm(m.wrapped) if math.isfinite(value) else float("nan")
        m.skipped = self._skip_reason(m.grad_norm) if math.isfinite(value) else None
        if math.isfinite(value) and m.skipped is None:
            set_lr(m.optimizer, lr)
            m.optimizer.step()
        m.optimizer.zero_grad(set_to_none=True)
        return value

    def _skip_reason(self, norm: float) -> str | None:
        limit = self.recipe.guards.max_grad_norm
        if not math.isfinite(norm):
            return f"gradient norm is {norm}"
        if limit is not None and norm > limit:
            return f"gradient norm {norm:.4g} exceeds guards.max_grad_norm {limit:g}"
        return None

    def _check_skips(self, step: int, phase: Phase) -> None:
        """Count skipped updates; too many in a row stop the run before anything of the step is kept."""
        limit = self.recipe.guards.max_skips
        for m in self.members:
            m.skips = m.skips + 1 if m.skipped else 0
            if m.skips > limit:
                last = ck.latest_full_state(m.dir)
                raise UnstableUpdate(
                    f"stopped at step {step} ({phase.name}): the {m.arch}'s update was skipped {m.skips} time(s) "
                    f"in a row ({m.skipped}; guards.max_skips is {limit}); "
                    f"last good checkpoint: {last if last else 'none yet'}",
                    fix="lower the learning rate or raise guards.max_grad_norm / guards.max_skips "
                    "(--set ...), then continue with --resume --force",
                )

    # ------------------------------------------------------------------ checkpoints

    def _tag_info(self, trainer_state: dict) -> dict:
        keys = ("step", "tokens", "phase", "phase_name", "phase_step", "phase_tokens", "arch", "objective", "loss")
        return {k: trainer_state.get(k) for k in keys}

    def _export_model(self, m: Member, full_state: dict) -> nn.Module:
        """The model to export: itself, or under FSDP2 an unsharded copy built from the gathered state."""
        if self.strategy != "fsdp":
            return m.model
        from ettin.model import EttinModel

        copy = EttinModel(m.model.config, init=False)
        copy.load_state_dict(full_state)
        copy.decoder.weight = copy.model.embeddings.tok_embeddings.weight
        return copy

    def checkpoint(self, phase: Phase) -> str:
        r, ctx = self.recipe, self.ctx
        tag = ck.make_tag(phase.tag_prefix, self.phase_step)
        rng_tensors, rng_extra = _rng_capture()
        gathered = ctx.all_gather_objects((rng_tensors, rng_extra))
        error = None
        for m in self.members:
            _check_finite_weights(m, self.step, phase, ctx)
            model_state = full_model_state(m.wrapped, self.strategy)
            optim_state = full_optimizer_state(m.wrapped, m.optimizer, self.strategy)
            if not ctx.is_main or error is not None:
                continue
            state = {
                "version": 1,
                "arch": m.arch,
                "objective": m.objective,
                "tag": tag,
                "step": self.step,
                "tokens": self.tokens,
                "phase": self.phase_index,
                "phase_name": phase.name,
                "phase_step": self.phase_step,
                "phase_tokens": self.phase_tokens,
                "loss": m.last_loss,
                "data": self.batches.state_dict(),
                "order_chain": m.order_chain,
                "skips": m.skips,
                "world_size": ctx.world_size,
                "strategy": self.strategy,
                "tokenizer_fingerprint": self.fingerprint,
                "recipe_sha256": hashlib.sha256(r.to_yaml().encode()).hexdigest(),
                "rng": {f"rank{i}": extra for i, (_, extra) in enumerate(gathered)},
                "time": time.time(),
            }
            rng_file = {f"rank{i}.{k}": v for i, (t, _) in enumerate(gathered) for k, v in t.items()}
            previous = ck.latest_full_state(m.dir)
            try:
                m.order.flush()
                m.metrics.flush()
                ck.write_checkpoint(
                    m.dir,
                    tag,
                    model_state=model_state,
                    optimizer_state=optim_state,
                    trainer_state=state,
                    rng_tensors=rng_file,
                )
                if r.checkpoint.export_hf:
                    ck.write_hf_export(
                        m.dir, tag, self._export_model(m, model_state), self._tag_info(state), self.tokenizer_dir
                    )
            except OSError as exc:
                kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
                error = (
                    f"could not write checkpoint {tag} of the {m.arch} ({exc.strerror or exc}); {kept}",
                    str(m.dir / ck.STATE_DIR / tag),
                )
                continue
        error = ctx.broadcast_object(error)
        if error is not None:
            raise EttinError(
                error[0], path=error[1], fix="free disk space or fix the folder, then run again with --resume"
            )
        if ctx.is_main:  # only once every model holds the new tag, or a crash here could leave no common step
            for m in self.members:
                ck.apply_retention(m.dir, r.checkpoint.keep_last)
        self.tags.append(tag)
        return tag

    # ------------------------------------------------------------------ held-out loss

    def _eval_samples(self, phase: Phase) -> list:
        from ettin.data.stream import TokenStream

        key = phase.seq_len
        if key not in self._eval_cache:
            stream = TokenStream(
                self.recipe.eval.data,
                seed=self.recipe.seed,
                seq_len=phase.seq_len,
                tokenizer_fingerprint=self.fingerprint,
            )
            self._eval_cache[key] = stream.next_batch(batch_size_sequences=self.recipe.eval.sequences)
        return self._eval_cache[key]

    @torch.no_grad()
    def evaluate(self, phase: Phase) -> dict[str, float]:
        from ettin.data.masking import make_inputs

        r, ctx = self.recipe, self.ctx
        samples = self._eval_samples(phase)
        s, e = rank_slice(len(samples), ctx.rank, ctx.world_size)
        out: dict[str, float] = {}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=r.precision == "bf16")
        for m in self.members:
            m.wrapped.eval()
            loss_sum, labels = 0.0, 0
            for a in range(s, e, r.micro_batch_size):
                b = min(a + r.micro_batch_size, e)
                batch = make_inputs(
                    samples[a:b],
                    m.objective,
                    special_ids=self.special_ids,
                    vocab_size=self.vocab_size,
                    mask_rate=r.eval.mask_rate,
                    seed=r.seed,
                    step=0,
                    first_index=a,
                )
                if not batch.num_label_tokens:
                    continue
                batch = batch.to(self.device)
                with autocast:
                    res = m.wrapped(
                        batch.input_ids,
                        cu_seqlens=batch.cu_seqlens,
                        max_seqlen=batch.max_seqlen,
                        labels=batch.labels,
                        return_logits=False,
                    )
                loss_sum += float(res.loss) * batch.num_label_tokens
                labels += batch.num_label_tokens
            m.wrapped.train()
            total, count = ctx.all_reduce_sum([loss_sum, float(labels)])
            out[m.arch] = total / count if count else float("nan")
            if ctx.is_main:
                m.metrics.log(
                    {
                        "kind": "eval",
                        "step": self.step,
                        "tokens": self.tokens,
                        "phase": phase.name,
                        "eval_loss": out[m.arch],
                        "eval_label_tokens": int(count),
                    }
                )
        return out

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        r, ctx = self.recipe, self.ctx
        t0 = time.perf_counter()
        every = r.checkpoint.every_tokens
        eval_every = r.eval.every_tokens
        resume_data = self._resume_data
        stopped = False
        with PhaseProgress(self.opt.progress and ctx.is_main) as bar:
            while self.phase_index < len(r.phases):
                phase = r.phases[self.phase_index]
                if self.phase_tokens >= phase.tokens:  # resumed exactly at a phase's end
                    self._next_phase()
                    resume_data = None
                    continue
                self._open_phase(self.phase_index, resume_data)
                resume_data = None
                bar.start_phase(
                    f"{phase.name} ({'+'.join(m.arch for m in self.members)})", phase.tokens, self.phase_tokens
                )
                while self.phase_tokens < phase.tokens:
                    self.train_step(phase, bar)
                    done = self.phase_tokens >= phase.tokens
                    if self.tokens // every > self._last_tokens // every or done:
                        self.checkpoint(phase)
                    if r.eval.data and (
                        done or (eval_every and self.tokens // eval_every > self._last_tokens // eval_every)
                    ):
                        losses = self.evaluate(phase)
                        bar.print(f"step {self.step}: held-out " + ", ".join(f"{a} {v:.4f}" for a, v in losses.items()))
                    if self.opt.max_steps is not None and self.step >= self.opt.max_steps:
                        stopped = True
                        break
                self._close_phase_stats(phase)
                if stopped:
                    break
                self._next_phase()
        for m in self.members:
            if m.metrics is not None:
                m.metrics.close()
            if m.order is not None:
                m.order.close()
        return TrainResult(
            self.out,
            self.step,
            self.tokens,
            not stopped,
            list(self.tags),
            list(self.stats),
            time.perf_counter() - t0,
            {m.arch: m.last_loss for m in self.members},
        )

    def _next_phase(self) -> None:
        self.phase_index += 1
        self.phase_step = 0
        self.phase_tokens = 0

    def train_step(self, phase: Phase, bar: PhaseProgress | None = None) -> None:
        from ettin.data.order import batch_hash

        samples = self.batches.next_batch()
        n_tokens = sum(len(s) for s in samples)
        self._last_tokens = self.tokens
        step = self.step + 1
        lr = lr_at(phase, self.recipe.optimizer.lr, self.phase_tokens + n_tokens)
        hashes = {}
        for m in self.members:
            hashes[m.arch] = m.order.record(step, phase.name, samples) if m.order is not None else batch_hash(samples)
        if len(set(hashes.values())) > 1:
            raise DataOrderMismatch(
                f"step {step}: the data orders of the pair differ ({', '.join(f'{a} {h}' for a, h in hashes.items())})",
                path=self.out,
                fix="this is a bug; the last checkpoints are intact; report it with the run's data_order folders",
            )
        losses = {}
        for m in self.members:
            t = time.perf_counter()
            losses[m.arch] = self._member_step(m, samples, phase, lr)
            m.phase_time += time.perf_counter() - t
            m.phase_tokens += n_tokens
        _check_finite(losses, step, phase, self.members)
        self._check_skips(step, phase)
        self.step = step
        self.tokens += n_tokens
        self.phase_step += 1
        self.phase_tokens += n_tokens
        for m in self.members:
            m.last_loss = losses[m.arch]
            m.order_chain = _chain(m.order_chain, hashes[m.arch])
            if m.metrics is not None:
                m.metrics.log(
                    {
                        "kind": "train",
                        "step": step,
                        "phase": phase.name,
                        "phase_step": self.phase_step,
                        "tokens": self.tokens,
                        "phase_tokens": self.phase_tokens,
                        "loss": losses[m.arch],
                        "lr": lr,
                        "grad_norm": m.grad_norm,
                        "skipped": m.skipped,
                        "batch_size": len(samples),
                        "batch_tokens": n_tokens,
                        "tokens_per_s": m.phase_tokens / m.phase_time if m.phase_time else None,
                    }
                )
        if bar is not None:  # tokens of the stream per second, all models of the run together
            rate = self.members[0].phase_tokens / max(sum(m.phase_time for m in self.members), 1e-9)
            bar.update(self.phase_tokens, rate, losses, lr)


def train(recipe: Recipe, options: TrainOptions) -> TrainResult:
    """Set up (run folder, tokenizer, data, models, resume) and train to the end of the recipe."""
    trainer = Trainer(recipe, options)
    trainer.setup()
    return trainer.run()
