"""Writing a tag for every member: the full state, its HF export, then retention.

The file formats are train/checkpoint.py's; this module decides what goes in them (a TrainState per
member), gathers sharded state, stops on non-finite weights, and turns a failed write into one error
that names the intact previous checkpoint.
"""

from __future__ import annotations

import hashlib
import time

from torch import nn

from ettin import runs
from ettin.errors import EttinError
from ettin.recipe import Phase
from ettin.train import checkpoint as ck
from ettin.train.context import Member, RunContext
from ettin.train.distributed import full_model_state, full_optimizer_state
from ettin.train.guards import check_finite_weights
from ettin.train.state import RankRng, TrainState


def export_model(m: Member, full_state: dict, strategy: str) -> nn.Module:
    """The model to export: itself, or under FSDP2 an unsharded copy built from the gathered state."""
    if strategy != "fsdp":
        return m.model
    from ettin.model import EttinModel

    copy = EttinModel(m.model.config, init=False)
    copy.load_state_dict(full_state)
    copy.decoder.weight = copy.model.embeddings.tok_embeddings.weight
    return copy


def write_export(run: RunContext, m: Member, tag: str, model_state: dict, state: TrainState) -> None:
    ck.write_hf_export(m.dir, tag, export_model(m, model_state, run.strategy), state.tag_info(), run.tokenizer_dir)


class Checkpointer:
    def __init__(self, run: RunContext):
        self.run = run
        self.recipe_sha256 = hashlib.sha256(run.recipe.to_yaml().encode()).hexdigest()

    def write(
        self, phase: Phase, *, step: int, tokens: int, phase_index: int, phase_step: int, phase_tokens: int, data: dict
    ) -> str:
        """Write the tag of this moment for every member (all ranks call it); returns the tag."""
        run, ctx = self.run, self.run.dist
        tag = runs.make_tag(phase.tag_prefix, phase_step)
        gathered = ctx.all_gather_objects(RankRng.capture())
        error = None
        for m in run.members:
            check_finite_weights(m, step, phase, ctx)
            model_state = full_model_state(m.wrapped, run.strategy)
            optim_state = full_optimizer_state(m.wrapped, m.optimizer, run.strategy)
            if not ctx.is_main or error is not None:
                continue
            state = TrainState(
                arch=m.arch,
                objective=m.objective,
                tag=tag,
                step=step,
                tokens=tokens,
                phase=phase_index,
                phase_name=phase.name,
                phase_step=phase_step,
                phase_tokens=phase_tokens,
                loss=m.last_loss,
                data=data,
                order_chain=m.order_chain,
                skips=m.skips,
                world_size=ctx.world_size,
                strategy=run.strategy,
                tokenizer_fingerprint=run.fingerprint,
                recipe_sha256=self.recipe_sha256,
                rng=dict(enumerate(gathered)),
                time=time.time(),
            )
            previous = runs.latest_full_state(m.dir)
            try:
                m.order.flush()
                m.metrics.flush()
                ck.write_checkpoint(m.dir, tag, model_state=model_state, optimizer_state=optim_state, state=state)
                if run.recipe.checkpoint.export_hf:
                    write_export(run, m, tag, model_state, state)
            except OSError as exc:
                kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
                error = (
                    f"could not write checkpoint {tag} of the {m.arch} ({exc.strerror or exc}); {kept}",
                    str(m.dir / runs.STATE_DIR / tag),
                )
                continue
        error = ctx.broadcast_object(error)
        if error is not None:
            raise EttinError(
                error[0], path=error[1], fix="free disk space or fix the folder, then run again with --resume"
            )
        if ctx.is_main:  # only once every model holds the new tag, or a crash here could leave no common step
            for m in run.members:
                ck.apply_retention(m.dir, run.recipe.checkpoint.keep_last)
        return tag
