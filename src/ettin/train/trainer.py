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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ettin import faults
from ettin.recipe import Phase, Recipe
from ettin.runs import RECIPE_FILE  # noqa: F401  (re-exported: the run's saved recipe)
from ettin.train.checkpointer import Checkpointer
from ettin.train.context import Member, RunContext
from ettin.train.distributed import DistContext, init_distributed
from ettin.train.guards import (  # noqa: F401  (re-exported: the errors a run stops with)
    DataOrderMismatch,
    NonFiniteLoss,
    UnstableUpdate,
    check_finite_losses,
    check_same_batch,
    count_skips,
)
from ettin.train.heldout import HeldOutLoss
from ettin.train.metrics import PhaseProgress
from ettin.train.schedule import checkpoint_due, lr_at
from ettin.train.setup import (
    build_run,
    common_resume_step,
    load_resume,
    open_run_files,
    release_run,
    repair_missing_exports,
)
from ettin.train.step import member_step


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


def _chain(previous: str, batch_hash: str) -> str:
    return hashlib.sha256(f"{previous}:{batch_hash}".encode()).hexdigest()[:32]


class Trainer:
    def __init__(self, recipe: Recipe, options: TrainOptions, ctx: DistContext | None = None):
        self.recipe = recipe
        self.options = options
        self.out = Path(options.out)
        self.ctx = ctx or init_distributed(options.device)
        self.log = options.log if self.ctx.is_main else (lambda *_: None)
        self.run_context: RunContext | None = None  # set by setup()
        # where the run is: what a checkpoint records and a resume restores
        self.step = 0
        self.tokens = 0
        self.phase_index = 0
        self.phase_step = 0
        self.phase_tokens = 0
        self.batches = None  # ettin.data.stream.PhaseBatches of the current phase
        self.tags: list[str] = []
        self.stats: list[PhaseStats] = []
        self._resume_data: dict | None = None  # the data-stream position to continue from
        self._last_tokens = 0

    @property
    def members(self) -> list[Member]:
        return self.run_context.members if self.run_context else []

    def setup(self) -> None:
        """Run folder, assets, models, and the resume point (see ettin.train.setup)."""
        import torch

        o, ctx = self.options, self.ctx
        if o.threads is not None:
            torch.set_num_threads(max(1, o.threads))
        run = build_run(self.recipe, self.out, ctx, resume=o.resume, force=o.force, log=self.log)
        self.run_context = run
        self.checkpointer = Checkpointer(run)
        self._heldout = HeldOutLoss(run)
        resume_from = common_resume_step(run.members) if o.resume else None
        states = load_resume(run, resume_from) if resume_from else None
        if states:
            first = next(iter(states.values())).trainer
            self.step, self.tokens = first.step, first.tokens
            self.phase_index, self.phase_step, self.phase_tokens = first.phase, first.phase_step, first.phase_tokens
            self._resume_data = first.data
        elif o.resume:
            self.log(f"{self.out}: no checkpoint yet, starting from the beginning")
        if ctx.is_main:
            open_run_files(run, self.step, resumed=bool(states), tensorboard=o.tensorboard)
            if states:
                repair_missing_exports(run, states)
        ctx.barrier()

    def checkpoint(self, phase: Phase) -> str:
        tag = self.checkpointer.write(
            phase,
            step=self.step,
            tokens=self.tokens,
            phase_index=self.phase_index,
            phase_step=self.phase_step,
            phase_tokens=self.phase_tokens,
            data=self.batches.state_dict(),
        )
        self.tags.append(tag)
        return tag

    def heldout_loss(self, phase: Phase) -> dict[str, float]:
        """Each model's loss on the recipe's held-out data (`eval.data`), logged to its metrics."""
        return self._heldout(phase, self.step, self.tokens)

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        r, ctx = self.recipe, self.ctx
        t0 = time.perf_counter()
        every = r.checkpoint.every_tokens
        eval_every = r.eval.every_tokens
        resume_data = self._resume_data
        stopped = False
        with PhaseProgress(self.options.progress and ctx.is_main) as bar:
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
                    if checkpoint_due(
                        self.phase_tokens - (self.tokens - self._last_tokens), self.phase_tokens, every, phase.tokens
                    ):
                        self.checkpoint(phase)
                    if r.eval.data and (
                        done or (eval_every and self.tokens // eval_every > self._last_tokens // eval_every)
                    ):
                        losses = self.heldout_loss(phase)
                        bar.print(f"step {self.step}: held-out " + ", ".join(f"{a} {v:.4f}" for a, v in losses.items()))
                    if self.options.max_steps is not None and self.step >= self.options.max_steps:
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

        faults.point("train.step", step=self.step + 1)
        samples = self.batches.next_batch()
        n_tokens = sum(len(s) for s in samples)
        self._last_tokens = self.tokens
        step = self.step + 1
        lr = lr_at(phase, self.recipe.optimizer.lr, self.phase_tokens + n_tokens)
        hashes = {}
        for m in self.members:
            hashes[m.arch] = m.order.record(step, phase.name, samples) if m.order is not None else batch_hash(samples)
        check_same_batch(hashes, step, self.out)
        losses = {}
        for m in self.members:
            t = time.perf_counter()
            losses[m.arch] = member_step(self.run_context, m, samples, phase, lr, step)
            m.phase_time += time.perf_counter() - t
            m.phase_tokens += n_tokens
        check_finite_losses(losses, step, phase, self.members)
        count_skips(self.members, self.recipe.guards.max_skips, step, phase)
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

    def _open_phase(self, index: int, resume_data: dict | None) -> None:
        from ettin.data.stream import PhaseBatches, TokenStream

        phase = self.recipe.phases[index]
        stream = TokenStream(
            phase.data_spec(),
            seed=self.recipe.seed,
            seq_len=phase.seq_len,
            tokenizer_fingerprint=self.run_context.fingerprint,
        )
        self.batches = PhaseBatches(
            stream,
            batch_size=phase.batch_size,
            warmup_tokens=phase.batch_warmup_tokens,
            warmup_start=phase.batch_warmup_min,  # never the micro-batch: it must not change the trajectory
            warmup_shape=phase.batch_warmup_shape,
        )
        if resume_data is not None:
            self.batches.load_state_dict(resume_data)
        for m in self.members:
            m.model.set_rope_theta(*phase.rope.for_arch(m.arch))
            m.phase_time, m.phase_tokens = 0.0, 0
        self._phase_steps_at_open = self.phase_step

    def _close_phase_stats(self, phase: Phase) -> None:
        for m in self.members:
            self.stats.append(
                PhaseStats(
                    m.arch, phase.name, self.phase_step - self._phase_steps_at_open, m.phase_tokens, m.phase_time
                )
            )


def train(recipe: Recipe, options: TrainOptions) -> TrainResult:
    """Set up (run folder, tokenizer, data, models, resume) and train to the end of the recipe."""
    trainer = Trainer(recipe, options)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        release_run(trainer.run_context)  # the run folder's lock (ettin.lock)
