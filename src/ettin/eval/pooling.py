"""Sentence embeddings from either arch.

The paper pools encoders by the mean over tokens and decoders by the last token: under a causal
mask only the last position has read the whole text, so a decoder's mean would be dominated by
prefixes. Texts are wrapped as `[CLS] text [SEP]` for both archs, so the decoder's last token is
the `[SEP]` that follows the text.

Public API (used by the MTEB and lm-eval adapters too):
  mean_pool, cls_pool, last_token_pool   padded [B, T, H] + mask [B, T] -> [B, H]
  pool_flat                              varlen [N, H] + cu_seqlens -> [B, H]
  default_pooling(arch)                  "mean" for encoders, "last" for decoders
  embed_ids / embed_texts                batched, no-grad embeddings of many texts
  pooled                                 differentiable embeddings of one batch (fine-tuning)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ettin.eval.handle import EvalModel, hidden_flat, token_batches

if TYPE_CHECKING:
    from ettin.model import EttinModel

POOLINGS = ("mean", "cls", "last")


def default_pooling(arch: str) -> str:
    return "last" if arch == "decoder" else "mean"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First real token (the [CLS]); works for left- or right-padding."""
    first = mask.to(torch.long).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last real token; works for left- or right-padding."""
    t = mask.shape[1]
    last = t - 1 - mask.to(torch.long).flip(1).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool_flat(h: torch.Tensor, cu_seqlens: torch.Tensor, how: str) -> torch.Tensor:
    """Pool a varlen output [N, H] into one vector per sequence [B, H]."""
    cu = cu_seqlens.to(torch.long)
    if how == "cls":
        return h[cu[:-1]]
    if how == "last":
        return h[cu[1:] - 1]
    if how == "mean":
        lengths = cu[1:] - cu[:-1]
        seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=h.device), lengths)
        out = torch.zeros(lengths.numel(), h.shape[1], dtype=h.dtype, device=h.device)
        out.index_add_(0, seg, h)
        return out / lengths.to(h.dtype).unsqueeze(1)
    raise ValueError(f"unknown pooling '{how}'")


def pooled(model: "EttinModel", seqs: Sequence[Sequence[int]], how: str) -> torch.Tensor:
    """Embeddings of one batch of token sequences, with gradients when enabled (fine-tuning)."""
    h, cu = hidden_flat(model, seqs)
    return pool_flat(h, cu, how)


@torch.no_grad()
def embed_ids(
    em: EvalModel, seqs: Sequence[Sequence[int]], pooling: str | None = None, normalize: bool = False
) -> torch.Tensor:
    """[len(seqs), hidden] float32 embeddings; batched by tokens, order preserved."""
    how = pooling or default_pooling(em.arch)
    out = torch.zeros(len(seqs), em.config.hidden_size, dtype=torch.float32)
    was_training = em.model.training
    em.model.eval()
    try:
        for batch in token_batches([len(s) for s in seqs], em.batch_tokens):
            vecs = pooled(em.model, [seqs[i] for i in batch], how).float().cpu()
            out[torch.tensor(batch)] = vecs
    finally:
        em.model.train(was_training)
    return F.normalize(out, dim=-1) if normalize else out


def embed_texts(
    em: EvalModel,
    texts: Sequence[str],
    pooling: str | None = None,
    normalize: bool = False,
    pairs: Sequence[str | None] | None = None,
) -> torch.Tensor:
    """Embeddings of texts wrapped as [CLS] text [SEP] (or [CLS] a [SEP] b [SEP] with `pairs`)."""
    a = em.encode_batch(texts)
    if pairs is None:
        seqs = [em.with_specials(x) for x in a]
    else:
        b_texts = [p for p in pairs if p is not None]
        b_ids = iter(em.encode_batch(b_texts))
        seqs = [em.pair_with_specials(x, next(b_ids) if p is not None else None) for x, p in zip(a, pairs)]
    return embed_ids(em, seqs, pooling, normalize)
