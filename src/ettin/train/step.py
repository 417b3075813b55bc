"""One model's optimizer step over one global batch: micro-batches, this rank's slice, the update.

The loss is normalised by the label tokens of the whole global batch (all micro-batches, all ranks),
so the gradient does not depend on how the batch is cut. Dropout masks are a hash of (seed, arch, step,
the sequence's index in the global batch, position) (`ettin.dropout`), so they do not depend on it
either, and a resumed step equals the uninterrupted one. torch's generator is still seeded from (seed,
arch, step, rank) for anything else that might draw from it.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from ettin import faults
from ettin.dropout import dropout_seed, sequence_dropout_keys
from ettin.recipe import Phase
from ettin.train.context import Member, RunContext
from ettin.train.distributed import rank_slice, set_gradient_sync
from ettin.train.guards import skip_reason
from ettin.train.optim import set_lr


def step_seed(seed: int, arch: str, step: int, rank: int) -> int:
    h = hashlib.sha256(f"{seed}/{arch}/{step}/{rank}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def grad_norm(model: nn.Module) -> float:
    """Global L2 norm of the gradients (whole model, also when FSDP2 shards them)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def member_step(run: RunContext, m: Member, samples: list, phase: Phase, lr: float, step: int) -> float:
    """Forward/backward over this rank's micro-batches of global step `step`, then the update (unless the
    guards skip it). Sets m.grad_norm and m.skipped; returns the loss."""
    from ettin.data.masking import make_inputs

    r, ctx, device = run.recipe, run.dist, run.dist.device
    faults.point("train.member_step", member=m, step=step)
    torch.manual_seed(step_seed(r.seed, m.arch, step, ctx.rank))
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
                special_ids=run.special_ids,
                vocab_size=run.vocab_size,
                mask_rate=phase.mask_rate,
                seed=r.seed,
                step=step,
                first_index=a + s,
            )
            local_labels += batch.num_label_tokens
            keys = sequence_dropout_keys(dropout_seed(r.seed, m.arch), step, a + s, e - s)
            pieces.append((batch, keys))
        else:
            pieces.append(None)
    total_labels = ctx.all_reduce_sum([float(local_labels)])[0]
    scale = ctx.world_size / max(total_labels, 1.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.precision == "bf16")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, piece in enumerate(pieces):
        batch, keys = piece if piece is not None else (None, None)
        with set_gradient_sync(m.wrapped, run.strategy, i == len(pieces) - 1):
            if batch is None or batch.num_label_tokens == 0:
                # keeps every rank in the same collectives; contributes nothing
                ids = torch.tensor([run.special_ids["cls_token_id"]] * 2, device=device)
                cu = torch.tensor([0, 2], dtype=torch.int32, device=device)
                with autocast:
                    out = m.wrapped(ids, cu_seqlens=cu, max_seqlen=2)
                loss = out.logits.float().sum() * 0.0
            else:
                batch = batch.to(device)
                with autocast:
                    out = m.wrapped(
                        batch.input_ids,
                        cu_seqlens=batch.cu_seqlens,
                        max_seqlen=batch.max_seqlen,
                        labels=batch.labels,
                        return_logits=False,
                        dropout_keys=keys,
                    )
                part = out.loss.float() * batch.num_label_tokens
                loss_sum += part.detach().double()
                loss = part * scale
            loss.backward()
    total = ctx.all_reduce_sum([float(loss_sum)])[0]
    value = total / total_labels if total_labels else 0.0
    m.grad_norm = grad_norm(m.wrapped) if math.isfinite(value) else float("nan")
    m.skipped = skip_reason(m.grad_norm, r.guards.max_grad_norm) if math.isfinite(value) else None
    if math.isfinite(value) and m.skipped is None:
        set_lr(m.optimizer, lr)
        m.optimizer.step()
    m.optimizer.zero_grad(set_to_none=True)
    return faults.point("train.member_loss", value, member=m, step=step, loss=value)
